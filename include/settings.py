"""Every setting of the pipeline, read from one place.

Precedence: the process environment, then the repo's `.env`, then `.state/generated.env` (secrets the local
stack generates on first start), then the defaults below. `.env.example` documents each name. A bad value
raises `SettingsError` naming the setting, so a misconfiguration stops at start-up rather than mid-run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parent.parent
GENERATED_ENV_NAME = "generated.env"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise SettingsError(f"{path}:{number}: expected NAME=value, got {line!r}")
        values[key.strip().removeprefix("export ").strip()] = value.strip().strip('"').strip("'")
    return values


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    pg_host: str
    pg_port: int
    pg_user: str
    pg_password: str
    pg_warehouse_db: str
    pg_source_db: str
    pg_airflow_db: str
    pg_statement_timeout_ms: int
    kafka_host: str
    kafka_port: int
    kafka_controller_port: int
    kafka_topic: str
    kafka_partitions: int
    kafka_heap_mb: int
    es_host: str
    es_port: int
    es_transport_port: int
    es_heap_mb: int
    spark_master: str
    spark_driver_memory: str
    airflow_api_port: int
    supabase_url: str
    supabase_key: str

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.kafka_host}:{self.kafka_port}"

    @property
    def es_url(self) -> str:
        return f"http://{self.es_host}:{self.es_port}"

    def pg_dsn(self, database: str) -> str:
        """A libpq URI with the statement timeout every session must carry."""
        return (
            f"postgresql://{quote(self.pg_user)}:{quote(self.pg_password, safe='')}@{self.pg_host}:{self.pg_port}"
            f"/{database}?options={quote(self._pg_options(), safe='')}"
        )

    def _pg_options(self) -> str:
        return f"-c statement_timeout={self.pg_statement_timeout_ms}"

    def _pg_connection(self, database: str, description: str) -> str:
        return json.dumps(
            {
                "conn_type": "postgres",
                "description": description,
                "host": self.pg_host,
                "port": self.pg_port,
                "login": self.pg_user,
                "password": self.pg_password,
                "schema": database,
                "extra": {"options": self._pg_options()},
            }
        )

    def airflow_connections(self) -> dict[str, str]:
        """`AIRFLOW_CONN_*` variables for every connection the DAGs name, as JSON."""
        connections = {
            "AIRFLOW_CONN_WAREHOUSE_POSTGRES": self._pg_connection(
                self.pg_warehouse_db, "BI warehouse: leads, chat_sessions, eventos_raw"
            ),
            "AIRFLOW_CONN_SUPABASE_POSTGRES": self._pg_connection(
                self.pg_source_db, "Supabase database (local stand-in by default)"
            ),
            "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps(
                {"conn_type": "spark", "host": self.spark_master, "extra": {"deploy-mode": "client"}}
            ),
            "AIRFLOW_CONN_ELASTICSEARCH_DEFAULT": json.dumps(
                {"conn_type": "elasticsearch", "host": self.es_host, "port": self.es_port, "schema": "http"}
            ),
            "AIRFLOW_CONN_KAFKA_DEFAULT": json.dumps(
                {"conn_type": "kafka", "extra": {"bootstrap.servers": self.kafka_bootstrap}}
            ),
        }
        if self.supabase_url:
            connections["AIRFLOW_CONN_SUPABASE_API"] = json.dumps(
                {"conn_type": "http", "host": self.supabase_url, "password": self.supabase_key}
            )
        return connections

    def airflow_environment(self) -> dict[str, str]:
        """Environment for any `airflow` command run against the local stack."""
        home = self.state_dir / "airflow"
        return {
            **airflow_code_environment(),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
                f"postgresql+psycopg2://{quote(self.pg_user)}:{quote(self.pg_password, safe='')}"
                f"@{self.pg_host}:{self.pg_port}/{self.pg_airflow_db}"
            ),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__API__PORT": str(self.airflow_api_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.airflow_api_port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "simple_auth_passwords.json"),
            **self.airflow_connections(),
        }


def airflow_code_environment() -> dict[str, str]:
    """Where Airflow finds this repo's DAGs, plugins and packages: all that parsing a DAG needs, no secret."""
    return {
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # The repo root on the path lets DAGs import include/ and spark/ in every Airflow process.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])),
    }


# name -> (default, converter); None as default means required.
_SPEC: dict[str, tuple[str | None, type]] = {
    "PIPELINE_STATE_DIR": (str(REPO_ROOT / ".state"), Path),
    "PIPELINE_PG_HOST": ("127.0.0.1", str),
    "PIPELINE_PG_PORT": ("54329", int),
    "PIPELINE_PG_USER": ("pipeline", str),
    "PIPELINE_PG_PASSWORD": (None, str),
    "PIPELINE_PG_WAREHOUSE_DB": ("warehouse", str),
    "PIPELINE_PG_SOURCE_DB": ("supabase", str),
    "PIPELINE_PG_AIRFLOW_DB": ("airflow", str),
    "PIPELINE_PG_STATEMENT_TIMEOUT_MS": ("60000", int),
    "PIPELINE_KAFKA_HOST": ("127.0.0.1", str),
    "PIPELINE_KAFKA_PORT": ("19092", int),
    "PIPELINE_KAFKA_CONTROLLER_PORT": ("19093", int),
    "PIPELINE_KAFKA_TOPIC": ("eventos", str),
    "PIPELINE_KAFKA_PARTITIONS": ("3", int),
    "PIPELINE_KAFKA_HEAP_MB": ("512", int),
    "PIPELINE_ES_HOST": ("127.0.0.1", str),
    "PIPELINE_ES_PORT": ("19200", int),
    "PIPELINE_ES_TRANSPORT_PORT": ("19300", int),
    "PIPELINE_ES_HEAP_MB": ("768", int),
    "PIPELINE_SPARK_MASTER": ("local[2]", str),
    "PIPELINE_SPARK_DRIVER_MEMORY": ("2g", str),
    "PIPELINE_AIRFLOW_API_PORT": ("18080", int),
    "PIPELINE_SUPABASE_URL": ("", str),
    "PIPELINE_SUPABASE_KEY": ("", str),
}

_PORTS = {name for name in _SPEC if name.endswith("_PORT")}
_POSITIVE = {"PIPELINE_KAFKA_PARTITIONS", "PIPELINE_KAFKA_HEAP_MB", "PIPELINE_ES_HEAP_MB",
             "PIPELINE_PG_STATEMENT_TIMEOUT_MS"}


def _convert(name: str, raw: str, converter: type):
    try:
        value = converter(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {converter.__name__}") from None
    if name in _PORTS and not 1 <= value <= 65535:
        raise SettingsError(f"{name}={value} is not a TCP port (1-65535)")
    if name in _POSITIVE and value <= 0:
        raise SettingsError(f"{name}={value} must be positive")
    return value


def raw_values(environ: dict[str, str] | None = None) -> dict[str, str]:
    environ = dict(os.environ if environ is None else environ)
    state_dir = Path(environ.get("PIPELINE_STATE_DIR", _SPEC["PIPELINE_STATE_DIR"][0]))
    merged: dict[str, str] = {}
    merged.update(_read_env_file(state_dir / GENERATED_ENV_NAME))
    merged.update(_read_env_file(REPO_ROOT / ".env"))
    # Every PIPELINE_* name, not only the foundation's: subsystems (extraction, stream operations) declare theirs.
    merged.update({k: v for k, v in environ.items() if k.startswith("PIPELINE_")})
    return merged


def load_settings(environ: dict[str, str] | None = None, *, require_secrets: bool = True) -> Settings:
    """Every setting, checked. `require_secrets=False` leaves unset secrets empty, for what connects to nothing
    (unit tests on a machine whose stack never ran)."""
    merged = raw_values(environ)
    values = {}
    for name, (default, converter) in _SPEC.items():
        raw = merged.get(name, default)
        if raw is None or raw == "":
            if default is None and require_secrets:
                raise SettingsError(
                    f"{name} is not set: put it in .env (see .env.example) or run `make up` to generate it"
                )
            raw = default or ""
        values[name] = _convert(name, raw, converter)
    return Settings(**{name.removeprefix("PIPELINE_").lower(): value for name, value in values.items()})
