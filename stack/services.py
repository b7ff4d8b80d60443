"""The local stack's services: PostgreSQL (Debian's packages), Kafka in KRaft mode and Elasticsearch (both from
Maven Central), and Spark's connector jars. Each service keeps its data, logs and pid file under the state
folder, and is stopped only through the pid it recorded when this module started it."""

from __future__ import annotations

import base64
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

from include.settings import GENERATED_ENV_NAME, REPO_ROOT, Settings, load_settings

log = logging.getLogger("stack")
MAVEN_DIR = REPO_ROOT / "stack" / "maven"
SERVICE_USER = "pipeline"
KAFKA_VERSION = "4.1.1"
ES_VERSION = "8.19.21"
SPARK_CONNECTOR_ARTIFACTS = "spark-sql-kafka-0-10_2.13,spark-token-provider-kafka-0-10_2.13,kafka-clients,commons-pool2,postgresql"


class StackError(RuntimeError):
    """Something stops the stack from starting; the message says what to do."""


# ---------------------------------------------------------------- helpers


def ensure_generated_secrets(state_dir: Path) -> None:
    """Generate the local Postgres password once; it never enters git (the state folder is ignored)."""
    path = state_dir / GENERATED_ENV_NAME
    if "PIPELINE_PG_PASSWORD" in os.environ or (REPO_ROOT / ".env").is_file() and \
            "PIPELINE_PG_PASSWORD=" in (REPO_ROOT / ".env").read_text():
        return
    if path.is_file() and "PIPELINE_PG_PASSWORD=" in path.read_text():
        return
    state_dir.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(f"PIPELINE_PG_PASSWORD={secrets.token_urlsafe(24)}\n")
    path.chmod(0o600)


def java_home() -> Path:
    java = os.environ.get("JAVA_HOME") and Path(os.environ["JAVA_HOME"]) / "bin" / "java"
    java = java if java and java.exists() else shutil.which("java")
    if not java:
        raise StackError("Java 17 or newer is required for Kafka and Elasticsearch and none was found: "
                         "install it (apt-get install openjdk-17-jre-headless) or set JAVA_HOME")
    real = Path(java).resolve()
    output = subprocess.run([str(real), "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)', output)
    if not match or int(match.group(1)) < 17:
        raise StackError(f"Java 17 or newer is required; {real} reports: {output.splitlines()[:1]}")
    return real.parent.parent


def port_open(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = Path(f"/proc/{pid}/stat")
    # A zombie has exited; it only waits for its parent to reap it.
    return not (state.exists() and state.read_text().split(") ")[-1].startswith("Z"))


def rss_mb(pid: int | None) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, TypeError, ProcessLookupError):
        pass
    return 0.0


def service_account() -> tuple[int, int] | None:
    """PostgreSQL and Elasticsearch refuse to run as root: when we are root they run as a system user."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
                       check=True)
        entry = pwd.getpwnam(SERVICE_USER)
    return entry.pw_uid, entry.pw_gid


def chown_tree(path: Path, account: tuple[int, int] | None) -> None:
    if account is None:
        return
    for item in [path, *path.rglob("*")]:
        os.chown(item, *account, follow_symlinks=False)


def as_service_user(command: list[str], account: tuple[int, int] | None) -> list[str]:
    if account is None:
        return command
    uid, gid = account
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *command]


def run_maven(pom: str, goal_args: list[str]) -> None:
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError("Maven (mvn) is needed once to fetch Kafka, Elasticsearch and the Spark jars: "
                         "apt-get install maven")
    command = [mvn, "-q", "-B", "-s", str(MAVEN_DIR / "settings.xml"), "-f", str(MAVEN_DIR / pom), *goal_args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"fetching {pom} from Maven Central failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")


def wait_until(predicate, timeout: float, what: str, log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    tail = ""
    if log_path and log_path.exists():
        tail = "\n  last log lines:\n    " + "\n    ".join(log_path.read_text(errors="replace").splitlines()[-15:])
    raise StackError(f"{what} did not become healthy within {timeout:.0f} s (log: {log_path}){tail}")


@dataclass
class Health:
    name: str
    healthy: bool
    detail: str
    pid: int | None = None
    rss_mb: float = 0.0
    version: str = ""


# ---------------------------------------------------------------- services


class Service:
    name = ""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = settings.state_dir / self.name
        self.log_path = settings.state_dir / "logs" / f"{self.name}.log"
        self.pid_path = settings.state_dir / "run" / f"{self.name}.pid"

    def recorded_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def running(self) -> bool:
        return pid_alive(self.recorded_pid())

    def check_port_free(self, port: int, setting: str) -> None:
        if port_open("127.0.0.1", port):
            raise StackError(f"port {port} ({setting}) is already taken by a process this stack did not start: "
                             f"stop it or choose another port with {setting} in .env")

    def stop(self) -> None:
        pid = self.recorded_pid()
        if pid_alive(pid):
            log.info("stopping %s (pid %s)", self.name, pid)
            os.kill(pid, self.stop_signal)
            deadline = time.monotonic() + self.stop_timeout
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.3)
            if pid_alive(pid):
                log.warning("%s (pid %s) ignored the stop signal for %s s; killing it", self.name, pid,
                            self.stop_timeout)
                os.kill(pid, signal.SIGKILL)
            # spawn() made the service the leader of a session of its own, so its process group id is its pid:
            # children it left behind (e.g. the Airflow scheduler's executor workers after a SIGKILL) go with it.
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # the group ended with its leader
        self.pid_path.unlink(missing_ok=True)

    stop_signal = signal.SIGTERM
    stop_timeout = 60

    def crash(self) -> None:
        """Kill the service the way a power cut would, by its recorded pid (SIGKILL: no shutdown of any kind), for
        the fault tests; restart() brings it back."""
        pid = self.recorded_pid()
        if not pid_alive(pid):
            raise StackError(f"{self.name} is not running (recorded pid {pid}): nothing to crash")
        log.info("crashing %s (SIGKILL to pid %s)", self.name, pid)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 30, f"{self.name} (pid {pid}) to die", self.log_path)

    def restart(self, timeout: float = 180) -> None:
        """Start the service again (after crash() or stop()) and wait until it is healthy."""
        self.start()
        wait_until(lambda: self.health().healthy, timeout, self.name, self.log_path)

    def prepare_dirs(self) -> None:
        for folder in (self.home, self.log_path.parent, self.pid_path.parent):
            folder.mkdir(parents=True, exist_ok=True)

    def spawn(self, command: list[str], env: dict | None = None) -> int:
        self.prepare_dirs()
        with self.log_path.open("ab") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env={**os.environ, **(env or {})}, start_new_session=True, cwd=self.home)
        self.pid_path.write_text(str(process.pid))
        return process.pid


# The Supabase stand-in is read by logical replication in `cdc` mode (include/extract/cdc.py), as hosted Supabase
# allows: wal_level=logical, and room for the pipeline's slot plus the tests' own uuid-named slots and walsenders.
# The initdb superuser that runs the extraction locally has REPLICATION, and initdb's pg_hba.conf admits replication
# connections from loopback.
LOGICAL_REPLICATION_OPTIONS = "-c wal_level=logical -c max_replication_slots=32 -c max_wal_senders=32"


class Postgres(Service):
    name = "postgres"
    stop_signal = signal.SIGINT  # PostgreSQL's "fast" shutdown: roll back clients, checkpoint, exit.

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @staticmethod
    def bin_dir() -> Path:
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                            key=lambda p: int(p.parent.parent.name))
        if not candidates:
            raise StackError("PostgreSQL server binaries not found: install Debian's package "
                             "(apt-get install postgresql), as `make system-deps` does")
        return candidates[-1].parent

    def recorded_pid(self) -> int | None:
        # postmaster.pid is PostgreSQL's own record of the server this data directory belongs to.
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def fetch(self) -> None:
        self.bin_dir()

    def crash(self) -> None:
        """`pg_ctl stop -m immediate`: every server process quits at once without a checkpoint, as after a power cut
        (a SIGKILL of the postmaster alone would leave its backends running); the next start runs crash recovery,
        which empties UNLOGGED tables."""
        pid = self.recorded_pid()
        if not pid_alive(pid):
            raise StackError(f"{self.name} is not running (recorded pid {pid}): nothing to crash")
        log.info("crashing %s (pg_ctl stop -m immediate, pid %s)", self.name, pid)
        subprocess.run(as_service_user([str(self.bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate",
                                        "-w", "-t", "60", "stop"], service_account()),
                       check=True, capture_output=True)

    def start(self) -> None:
        if self.running():
            if self.wal_level() == "logical":
                return
            # A server started before the stack asked for logical replication: the setting needs a restart.
            log.info("restarting postgres for wal_level=logical")
            self.stop()
        self.check_port_free(self.settings.pg_port, "PIPELINE_PG_PORT")
        account = service_account()
        self.prepare_dirs()
        socket_dir = self.settings.state_dir / "run" / "pgsocket"
        socket_dir.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "PG_VERSION").exists():
            password_file = self.home / "initdb.pw"
            password_file.write_text(self.settings.pg_password)
            chown_tree(self.home, account)
            subprocess.run(as_service_user(
                [str(self.bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", self.settings.pg_user,
                 f"--pwfile={password_file}", "--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8",
                 "--locale=C.UTF-8"], account), check=True, capture_output=True)
            password_file.unlink()
        self.log_path.touch()
        for path in (self.home, socket_dir, self.log_path):
            chown_tree(path, account)
        options = (f"-c listen_addresses={self.settings.pg_host} -p {self.settings.pg_port} "
                   f"-c unix_socket_directories={socket_dir} -c shared_buffers=256MB -c max_connections=200 "
                   f"{LOGICAL_REPLICATION_OPTIONS}")
        subprocess.run(as_service_user(
            [str(self.bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options,
             "-w", "-t", "60", "start"], account), check=True, capture_output=True)

    def wal_level(self) -> str:
        import psycopg

        with psycopg.connect(self.settings.pg_dsn("postgres"), connect_timeout=10) as connection:
            return connection.execute("SHOW wal_level").fetchone()[0]

    def health(self) -> Health:
        import psycopg

        pid = self.recorded_pid()
        try:
            with psycopg.connect(self.settings.pg_dsn("postgres"), connect_timeout=3) as connection:
                version = connection.execute("SHOW server_version").fetchone()[0].split()[0]
            return Health(self.name, True, f"127.0.0.1:{self.settings.pg_port}", pid, rss_mb(pid), version)
        except psycopg.Error as error:
            return Health(self.name, False, str(error).strip().splitlines()[0], pid)

    def create_databases(self, databases: tuple[str, ...] | None = None) -> None:
        """The given databases (default: the warehouse, the source stand-in and Airflow's), when missing."""
        import psycopg
        from psycopg import sql

        if databases is None:
            databases = (self.settings.pg_warehouse_db, self.settings.pg_source_db, self.settings.pg_airflow_db)
        with psycopg.connect(self.settings.pg_dsn("postgres"), autocommit=True) as connection:
            for database in databases:
                exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
                if not exists:
                    connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                    log.info("created database %s", database)


class Kafka(Service):
    name = "kafka"

    @property
    def libs(self) -> Path:
        return self.settings.state_dir / "dist" / f"kafka-{KAFKA_VERSION}" / "libs"

    def fetch(self) -> None:
        marker = self.libs / ".complete"
        if marker.exists():
            return
        log.info("fetching Kafka %s from Maven Central", KAFKA_VERSION)
        run_maven("kafka-broker.pom.xml", ["dependency:copy-dependencies", f"-DoutputDirectory={self.libs}",
                                           "-DincludeScope=runtime"])
        marker.touch()

    def java(self, main_class: str, *args: str, heap_mb: int = 256) -> list[str]:
        return [str(java_home() / "bin" / "java"), f"-Xms{heap_mb}m", f"-Xmx{heap_mb}m",
                "-cp", f"{self.libs}/*", f"-Dlog4j2.configurationFile={MAVEN_DIR.parent / 'kafka-log4j2.yaml'}",
                main_class, *args]

    def write_config(self) -> Path:
        s = self.settings
        config = self.home / "server.properties"
        config.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{s.kafka_host}:{s.kafka_controller_port}",
            f"listeners=PLAINTEXT://{s.kafka_host}:{s.kafka_port},CONTROLLER://{s.kafka_host}:{s.kafka_controller_port}",
            f"advertised.listeners=PLAINTEXT://{s.kafka_host}:{s.kafka_port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={self.home / 'data'}",
            f"num.partitions={s.kafka_partitions}",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # Test topics are created and deleted all the time; the broker must really delete them.
            "delete.topic.enable=true",
            "auto.create.topics.enable=false",
            "",
        ]))
        return config

    def start(self) -> None:
        if self.running():
            return
        self.check_port_free(self.settings.kafka_port, "PIPELINE_KAFKA_PORT")
        self.check_port_free(self.settings.kafka_controller_port, "PIPELINE_KAFKA_CONTROLLER_PORT")
        self.prepare_dirs()
        config = self.write_config()
        if not (self.home / "data" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            # "=" form: a random id may start with "-", which the tool would read as an option
            subprocess.run(self.java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                                     "-c", str(config)),
                           check=True, capture_output=True)
        self.spawn(self.java("kafka.Kafka", str(config), heap_mb=self.settings.kafka_heap_mb))

    def admin(self):
        from kafka.admin import KafkaAdminClient

        return KafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap, client_id="stack",
                                request_timeout_ms=5000)

    def health(self) -> Health:
        pid = self.recorded_pid()
        if not port_open(self.settings.kafka_host, self.settings.kafka_port):
            return Health(self.name, False, f"nothing listens on {self.settings.kafka_bootstrap}", pid)
        try:
            admin = self.admin()
            topics = admin.list_topics()
            admin.close()
        except Exception as error:  # noqa: BLE001 - any client failure means "not healthy", reported as such
            return Health(self.name, False, f"{type(error).__name__}: {error}", pid)
        detail = f"{self.settings.kafka_bootstrap}, topic {self.settings.kafka_topic} " + (
            "present" if self.settings.kafka_topic in topics else "missing")
        return Health(self.name, True, detail, pid, rss_mb(pid), KAFKA_VERSION)

    def create_topic(self) -> None:
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = self.admin()
        try:
            admin.create_topics([NewTopic(self.settings.kafka_topic, self.settings.kafka_partitions, 1)])
            log.info("created topic %s with %s partitions", self.settings.kafka_topic, self.settings.kafka_partitions)
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()


class Elasticsearch(Service):
    name = "elasticsearch"

    @property
    def dist(self) -> Path:
        return self.settings.state_dir / "dist" / f"elasticsearch-{ES_VERSION}"

    def fetch(self) -> None:
        if (self.dist / "bin" / "elasticsearch").exists():
            return
        log.info("fetching Elasticsearch %s from Maven Central", ES_VERSION)
        download = self.settings.state_dir / "dist" / "downloads"
        run_maven("elasticsearch.pom.xml", ["dependency:copy-dependencies", f"-DoutputDirectory={download}"])
        archive = next(download.glob(f"elasticsearch-{ES_VERSION}*.zip"))
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(self.dist.parent)
        for script in (self.dist / "bin").iterdir():
            script.chmod(0o755)
        archive.unlink()

    @property
    def server_pid_path(self) -> Path:
        return self.pid_path.with_name("elasticsearch-server.pid")

    def recorded_pid(self) -> int | None:
        # The JVM that serves requests writes this file (-p); the launcher's pid is kept beside it.
        try:
            return int(self.server_pid_path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def launcher_pid(self) -> int | None:
        return Service.recorded_pid(self)

    def start(self) -> None:
        if self.running():
            return
        self.check_port_free(self.settings.es_port, "PIPELINE_ES_PORT")
        self.check_port_free(self.settings.es_transport_port, "PIPELINE_ES_TRANSPORT_PORT")
        account = service_account()
        self.prepare_dirs()
        config = self.home / "config"
        if not config.exists():
            shutil.copytree(self.dist / "config", config)
        for folder in ("data", "logs", "tmp"):
            (self.home / folder).mkdir(exist_ok=True)
        self.server_pid_path.unlink(missing_ok=True)
        self.log_path.touch()
        chown_tree(self.home, account)
        chown_tree(self.pid_path.parent, account)
        chown_tree(self.log_path, account)
        s = self.settings
        settings = {
            "discovery.type": "single-node",
            "xpack.security.enabled": "false",
            "network.host": s.es_host,
            "http.port": s.es_port,
            "transport.port": s.es_transport_port,
            "path.data": self.home / "data",
            "path.logs": self.home / "logs",
            # Small dev disks must not turn indices read-only; tests delete their indices by wildcard.
            "cluster.routing.allocation.disk.threshold_enabled": "false",
            "action.destructive_requires_name": "false",
        }
        command = [str(self.dist / "bin" / "elasticsearch"), "-p", str(self.server_pid_path)]
        for key, value in settings.items():
            command += ["-E", f"{key}={value}"]
        env = {
            "ES_JAVA_HOME": str(java_home()),
            "ES_PATH_CONF": str(config),
            "ES_TMPDIR": str(self.home / "tmp"),
            "ES_JAVA_OPTS": f"-Xms{s.es_heap_mb}m -Xmx{s.es_heap_mb}m",
        }
        self.spawn(as_service_user(command, account), env)

    def stop(self) -> None:
        launcher = self.launcher_pid()
        super().stop()
        if pid_alive(launcher):
            os.kill(launcher, signal.SIGTERM)
        self.server_pid_path.unlink(missing_ok=True)

    def health(self) -> Health:
        pid = self.recorded_pid()
        try:
            with urllib.request.urlopen(f"{self.settings.es_url}/_cluster/health", timeout=3) as response:
                status = json.load(response)["status"]
        except (urllib.error.URLError, OSError, ValueError) as error:
            return Health(self.name, False, f"{self.settings.es_url}: {error}", pid)
        return Health(self.name, status in ("green", "yellow"), f"{self.settings.es_url} cluster {status}",
                      pid, rss_mb(pid), ES_VERSION)


class SparkJars(Service):
    """The connector jars every driver loads; Spark runs in local mode inside each driver unless the local cluster
    (SparkMaster, SparkWorker) is enabled."""

    name = "spark"

    def fetch(self) -> None:
        from spark.job_spec import jars_dir

        target = jars_dir(self.settings)
        if (target / ".complete").exists():
            return
        log.info("fetching Spark connector jars from Maven Central")
        run_maven("spark-jars.pom.xml", ["dependency:copy-dependencies", f"-DoutputDirectory={target}",
                                         f"-DincludeArtifactIds={SPARK_CONNECTOR_ARTIFACTS}"])
        (target / ".complete").touch()

    def start(self) -> None:
        self.fetch()

    def stop(self) -> None:
        pass

    def health(self) -> Health:
        from importlib.metadata import version

        from spark.job_spec import SPARK_VERSION, jars_dir

        jars = sorted(p.name for p in jars_dir(self.settings).glob("*.jar"))
        installed = {name: version(name) for name in ("pyspark", "pyspark-client")}
        mismatched = {n: v for n, v in installed.items() if v != SPARK_VERSION}
        if mismatched:
            return Health(self.name, False, f"expected pyspark {SPARK_VERSION}, installed {installed}")
        if not jars:
            return Health(self.name, False, "connector jars not fetched")
        return Health(self.name, True, f"master {self.settings.spark_master}, {len(jars)} connector jars",
                      version=SPARK_VERSION)


def spark_home() -> Path:
    """The pip pyspark package: its bin/spark-class and jars (it ships no sbin/start-*.sh scripts)."""
    import pyspark

    return Path(pyspark.__file__).parent


class SparkDaemon(Service):
    """A standalone master or worker: `spark-class <main class>`, whose script execs the JVM, so the recorded pid is
    the JVM's. Bound to loopback; it gets no PYTHONPATH, so executors import only what an application ships."""

    main_class = ""
    # The master's and workers' own heap (SPARK_DAEMON_MEMORY, 1g by default); executors are separate JVMs.
    daemon_memory = "256m"

    def fetch(self) -> None:
        pass

    def arguments(self) -> list[str]:
        raise NotImplementedError

    def ports(self) -> dict[int, str]:
        raise NotImplementedError

    def options(self) -> dict[str, str]:
        """SPARK_MASTER_OPTS or SPARK_WORKER_OPTS."""
        raise NotImplementedError

    def start(self) -> None:
        if self.running():
            return
        for port, setting in self.ports().items():
            self.check_port_free(port, setting)
        self.prepare_dirs()
        command = [str(spark_home() / "bin" / "spark-class"), self.main_class, *self.arguments()]
        self.spawn(command, {"SPARK_HOME": str(spark_home()), "JAVA_HOME": str(java_home()),
                             "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": self.daemon_memory,
                             "SPARK_LOG_DIR": str(self.home / "logs"), "PYTHONPATH": "", **self.options()})

    def master_state(self) -> dict:
        url = f"http://127.0.0.1:{self.settings.spark_master_ui_port}/json/"
        with urllib.request.urlopen(url, timeout=3) as response:
            return json.load(response)


class SparkMaster(SparkDaemon):
    name = "spark-master"
    main_class = "org.apache.spark.deploy.master.Master"

    def ports(self) -> dict[int, str]:
        return {self.settings.spark_master_port: "PIPELINE_SPARK_MASTER_PORT",
                self.settings.spark_master_ui_port: "PIPELINE_SPARK_MASTER_UI_PORT"}

    def options(self) -> dict[str, str]:
        # No REST submission server (port 6066): nothing here uses it, and it would be one more open port.
        return {"SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false"}

    def arguments(self) -> list[str]:
        return ["--host", "127.0.0.1", "--port", str(self.settings.spark_master_port),
                "--webui-port", str(self.settings.spark_master_ui_port)]

    def health(self) -> Health:
        from spark.job_spec import SPARK_VERSION

        pid = self.recorded_pid()
        if not pid_alive(pid):
            return Health(self.name, False, "not running", pid)
        try:
            state = self.master_state()
        except (urllib.error.URLError, OSError, ValueError) as error:
            return Health(self.name, False, f"UI port {self.settings.spark_master_ui_port}: {error}", pid)
        return Health(self.name, state.get("status") == "ALIVE",
                      f"{self.settings.spark_cluster_url}, {state.get('aliveworkers', 0)} workers alive, "
                      f"{len(state.get('activeapps', []))} apps, UI http://127.0.0.1:{self.settings.spark_master_ui_port}",
                      pid, rss_mb(pid), SPARK_VERSION)


class SparkWorker(SparkDaemon):
    main_class = "org.apache.spark.deploy.worker.Worker"

    def __init__(self, settings: Settings, number: int):
        self.number = number
        self.name = f"spark-worker-{number}"
        super().__init__(settings)

    @property
    def work_dir(self) -> Path:
        """Where the worker runs its executors: <work dir>/<application id>/<executor id>/."""
        return self.home / "work"

    @property
    def ui_port(self) -> int:
        return self.settings.spark_worker_ui_port + self.number

    def ports(self) -> dict[int, str]:
        return {self.ui_port: "PIPELINE_SPARK_WORKER_UI_PORT"}

    def options(self) -> dict[str, str]:
        # Finished applications' folders (their jars and zips) go after a day.
        return {"SPARK_WORKER_OPTS": "-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.appDataTtl=86400"}

    def arguments(self) -> list[str]:
        return [self.settings.spark_cluster_url, "--host", "127.0.0.1", "--cores", "1",
                "--memory", self.settings.spark_worker_memory, "--webui-port", str(self.ui_port),
                "--work-dir", str(self.work_dir)]

    def health(self) -> Health:
        from spark.job_spec import SPARK_VERSION

        pid = self.recorded_pid()
        if not pid_alive(pid):
            return Health(self.name, False, "not running", pid)
        try:
            workers = self.master_state().get("workers", [])
        except (urllib.error.URLError, OSError, ValueError) as error:
            return Health(self.name, False, f"master UI: {error}", pid)
        mine = [w for w in workers if w.get("webuiaddress", "").endswith(f":{self.ui_port}") and w.get("state") == "ALIVE"]
        if not mine:
            return Health(self.name, False, f"not registered with {self.settings.spark_cluster_url}", pid)
        return Health(self.name, True, f"1 core, {self.settings.spark_worker_memory}, {mine[0]['coresused']} core used, "
                      f"UI http://127.0.0.1:{self.ui_port}", pid, rss_mb(pid), SPARK_VERSION)


class AirflowComponent(Service):
    """One long-running Airflow process (API server, scheduler, DAG processor or triggerer) for the UI."""

    def __init__(self, settings: Settings, component: str):
        self.component = component
        self.name = f"airflow-{component}"
        super().__init__(settings)
        # Pid and log under the instance's home: another home (the tests') is another instance, started and
        # stopped without touching the user's.
        self.home = settings.resolved_airflow_home
        self.log_path = self.home / "logs" / f"{self.name}.log"
        self.pid_path = self.home / "run" / f"{self.name}.pid"

    def fetch(self) -> None:
        pass

    def start(self) -> None:
        if self.running():
            return
        if self.component == "api-server":
            self.check_port_free(self.settings.airflow_api_port, "PIPELINE_AIRFLOW_API_PORT")
        venv_bin = Path(sys.executable).parent
        command = [str(venv_bin / "airflow"), self.component]
        if self.component == "api-server":
            command += ["--host", "127.0.0.1", "--port", str(self.settings.airflow_api_port)]
        # airflow launches its sub-commands by name, so the venv's bin/ must lead PATH.
        self.spawn(command, {**self.settings.airflow_environment(),
                             "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.airflow_api_port}"

    def health(self) -> Health:
        pid = self.recorded_pid()
        if not pid_alive(pid):
            return Health(self.name, False, "not running", pid)
        if self.component != "api-server":
            return Health(self.name, True, "running", pid, rss_mb(pid))
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=3) as response:
                report = json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as error:
            return Health(self.name, False, f"{self.url}: {error}", pid)
        unhealthy = [part for part, state in report.items() if isinstance(state, dict)
                     and state.get("status") not in (None, "healthy")]
        return Health(self.name, not unhealthy, f"{self.url} " + (f"unhealthy: {unhealthy}" if unhealthy else
                                                                  "all components healthy"), pid, rss_mb(pid))

    def admin_password(self) -> str:
        path = Path(self.settings.airflow_environment()["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
        return json.loads(path.read_text())["admin"]


AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def airflow_services(settings: Settings | None = None) -> list[AirflowComponent]:
    settings = settings or load_settings()
    return [AirflowComponent(settings, component) for component in AIRFLOW_COMPONENTS]


def spark_cluster_services(settings: Settings) -> list[SparkDaemon]:
    """The local standalone cluster's master and workers: those the settings ask for, and any other worker this
    stack recorded a pid for (PIPELINE_SPARK_WORKERS lowered since), so that `down` stops it too."""
    numbers = set(range(settings.spark_workers))
    for pid_file in (settings.state_dir / "run").glob("spark-worker-*.pid"):
        suffix = pid_file.stem.removeprefix("spark-worker-")
        if suffix.isdigit():
            numbers.add(int(suffix))
    return [SparkMaster(settings), *(SparkWorker(settings, number) for number in sorted(numbers))]


def spark_cluster_enabled(settings: Settings) -> bool:
    """The settings point the pipeline at the local cluster, or it was started (`up --spark-cluster`)."""
    return settings.spark_master == settings.spark_cluster_url or SparkMaster(settings).recorded_pid() is not None


def all_services(settings: Settings | None = None, *, spark_cluster: bool = False) -> list[Service]:
    """The stack's services in start order; with the local Spark cluster when asked for or enabled."""
    settings = settings or load_settings()
    services = [Postgres(settings), Kafka(settings), Elasticsearch(settings), SparkJars(settings)]
    if spark_cluster or spark_cluster_enabled(settings):
        services += spark_cluster_services(settings)
    return services


def airflow_command(settings, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, **settings.airflow_environment(),
           # airflow launches its sub-commands by name, so the venv's bin/ must lead PATH.
           "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(venv_bin / "airflow"), *args], env=env, **kwargs)


def init_airflow(settings) -> None:
    """Create and migrate Airflow's metadata database once per Airflow version and home."""
    from importlib.metadata import version

    marker = settings.resolved_airflow_home / f".migrated-{version('apache-airflow')}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    Postgres(settings).create_databases((settings.pg_airflow_db,))
    log.info("migrating the Airflow metadata database %s", settings.pg_airflow_db)
    result = airflow_command(settings, ["db", "migrate"], capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"airflow db migrate failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    marker.touch()
