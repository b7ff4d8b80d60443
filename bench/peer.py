"""The peer: what a user would deploy instead for the Postgres side, Kafka Connect in standalone mode with the
Debezium JDBC sink connector (both from Maven Central, stack/maven/kafka-connect.pom.xml), upserting on the
primary key into its own copy of the tables.

The same rows are produced to one topic per table in the envelope the connector needs (JSON with schemas, the
Debezium semantic types for uuid, jsonb and timestamptz). The clock starts when the worker process is launched
and stops when the last row holds its newest version, as a user would time "deploy, then wait until it is in".
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.data import Dataset
from bench.scratch import Landed, Scratch, produce
from include.entities import ENTITIES, Entity
from include.settings import Settings
from spark.validation import PAYLOAD
from stack.services import Kafka, StackError, pid_alive, run_maven

log = logging.getLogger(__name__)

CONNECT_VERSION = "4.1.1"
CONNECTOR_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"
POM = "kafka-connect.pom.xml"

# Logical type -> Kafka Connect schema, with the semantic names the Debezium JDBC sink binds to PostgreSQL types.
CONNECT_TYPES: dict[str, dict] = {
    "uuid": {"type": "string", "name": "io.debezium.data.Uuid"},
    "text": {"type": "string"},
    "keyword": {"type": "string"},
    "text[]": {"type": "array", "items": {"type": "string", "optional": True}},
    "jsonb": {"type": "string", "name": "io.debezium.data.Json"},
    "integer": {"type": "int32"},
    "numeric": {"type": "double"},
    "boolean": {"type": "boolean"},
    "timestamptz": {"type": "string", "name": "io.debezium.time.ZonedTimestamp"},
    "source_position": {"type": "string"},
}


class KafkaConnect(Kafka):
    """A Connect worker run like the stack's broker (same java launcher, pid file and log), on its own classpath."""

    name = "kafka-connect"

    @property
    def dist(self) -> Path:
        return self.settings.state_dir / "dist" / f"kafka-connect-{CONNECT_VERSION}"

    @property
    def libs(self) -> Path:
        return self.dist / "libs"

    @property
    def plugins(self) -> Path:
        return self.dist / "plugins"

    def fetch(self) -> None:
        marker = self.dist / ".complete"
        if marker.exists():
            return
        log.info("fetching Kafka Connect %s and the Debezium JDBC sink from Maven Central", CONNECT_VERSION)
        run_maven(POM, ["-P", "worker", "dependency:copy-dependencies", f"-DoutputDirectory={self.libs}",
                        "-DincludeScope=runtime"])
        # The worker provides Kafka's API, slf4j and Jackson to every plugin; a second Jackson in the plugin folder
        # breaks Jackson's module lookup (ServiceLoader finds the worker's modules: "not a subtype").
        run_maven(POM, ["-P", "jdbc-sink", "dependency:copy-dependencies",
                        f"-DoutputDirectory={self.plugins / 'debezium-connector-jdbc'}", "-DincludeScope=runtime",
                        "-DexcludeGroupIds=org.apache.kafka,org.slf4j,com.fasterxml.jackson.core"])
        marker.touch()

    def start_standalone(self, worker: Path, connector: Path, heap_mb: int) -> int:
        if self.running():
            raise StackError(f"a Kafka Connect worker this stack started is still running (pid {self.recorded_pid()})")
        return self.spawn(self.java("org.apache.kafka.connect.cli.ConnectStandalone", str(worker), str(connector),
                                    heap_mb=heap_mb))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def connect_schema(entity: Entity) -> dict:
    fields = [{**CONNECT_TYPES[c.type], "optional": c.name != entity.key, "field": c.name} for c in entity.columns]
    return {"type": "struct", "name": f"{entity.table}.Value", "optional": False, "fields": fields}


def envelope(entity: Entity, raw: bytes, schema_json: str) -> bytes:
    """A message re-shaped for the JsonConverter with schemas: {"schema": ..., "payload": the row}."""
    message = json.loads(raw)
    row = {}
    for column in entity.columns:
        value = raw.decode() if column.name == PAYLOAD else message.get(column.name)
        row[column.name] = json.dumps(value, ensure_ascii=False) if column.type == "jsonb" and isinstance(
            value, dict) else value
    return f'{{"schema":{schema_json},"payload":{json.dumps(row, ensure_ascii=False)}}}'.encode()


def worker_properties(settings: Settings, home: Path, plugins: Path, port: int, batch: int) -> dict[str, str]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "true",
        "offset.storage.file.filename": str(home / "standalone.offsets"),
        "plugin.path": str(plugins),
        # Find plugins through their ServiceLoader manifests (Debezium ships them) instead of scanning every class
        # of the plugin folder by reflection, which costs tens of seconds at each start.
        "plugin.discovery": "service_load",
        "listeners": f"http://127.0.0.1:{port}",
        # Records handed to the sink per poll: matched to its JDBC batch size.
        "consumer.max.poll.records": str(batch),
    }


def connector_properties(settings: Settings, name: str, schema: str, topics: dict[str, str], batch: int,
                         tasks: int) -> dict[str, str]:
    prefix = os.path.commonprefix(list(topics.values()))
    # pgjdbc's `options` carries the statement timeout every session must have.
    timeout = f"-c%20statement_timeout%3D{settings.pg_statement_timeout_ms}"
    return {
        "name": name,
        "connector.class": CONNECTOR_CLASS,
        "tasks.max": str(tasks),
        "topics": ",".join(topics.values()),
        "connection.url": f"jdbc:postgresql://{settings.pg_host}:{settings.pg_port}/{settings.pg_warehouse_db}"
                          f"?currentSchema={schema}&options={timeout}",
        "connection.username": settings.pg_user,
        "connection.password": settings.pg_password,
        "insert.mode": "upsert",
        "primary.key.mode": "record_value",
        "primary.key.fields": "id",
        "schema.evolution": "none",
        "batch.size": str(batch),
        "use.time.zone": "UTC",
        # Topic `<prefix><table>` -> table `<schema>.<table>`.
        "transforms": "table",
        "transforms.table.type": "org.apache.kafka.connect.transforms.RegexRouter",
        "transforms.table.regex": f"{prefix}(.*)",
        "transforms.table.replacement": "$1",
        "collection.name.format": f"{schema}.${{topic}}",
    }


def write_properties(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    path.chmod(0o600)  # the connector's file holds the database password
    return path


def connector_failure(port: int, name: str) -> str | None:
    """The connector's or a task's FAILED trace from the worker's REST API; None while running (or not up yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/connectors/{name}/status", timeout=2) as response:
            status = json.load(response)
    except (urllib.error.URLError, OSError):
        return None  # the REST server starts after the JVM: not up yet is not a failure
    states = [status.get("connector", {}), *status.get("tasks", [])]
    failed = [state.get("trace", "FAILED") for state in states if state.get("state") == "FAILED"]
    return failed[0] if failed else None


def measure(settings: Settings, scratch: Scratch, dataset: Dataset, landed: Landed, batch: int = 2000,
            tasks: int | None = None, heap_mb: int = 1024, timeout_s: float = 900, monitor=None) -> dict:
    worker = KafkaConnect(settings)
    worker.fetch()
    schema = scratch.pg_schema("peer")
    topics = {entity.name: scratch.topic(f"peer_{entity.table}") for entity in ENTITIES}
    schemas = {entity.name: json.dumps(connect_schema(entity)) for entity in ENTITIES}
    for entity in ENTITIES:
        pairs = ((m.key, envelope(entity, m.value, schemas[entity.name]))
                 for m in dataset.messages if m.entity == entity.name)
        produce(settings, topics[entity.name], pairs)

    name = scratch.name("peer")
    scratch.consumer_group(f"connect-{name}")
    home = worker.home / name
    home.mkdir(parents=True)
    port = free_port()
    tasks = tasks or os.cpu_count() or 1
    worker_file = write_properties(home / "worker.properties",
                                   worker_properties(settings, home, worker.plugins, port, batch))
    connector_file = write_properties(home / "connector.properties",
                                      connector_properties(settings, name, schema, topics, batch, tasks))
    expected = landed.expected_total()
    started = time.perf_counter()
    pid = worker.start_standalone(worker_file, connector_file, heap_mb)
    if monitor is not None:
        monitor.watch("kafka-connect", pid)
    first_row_s = None
    try:
        while True:
            visible = landed.newest_rows(schema)
            elapsed = time.perf_counter() - started
            if visible and first_row_s is None:
                first_row_s = elapsed
            if visible >= expected:
                break
            failure = connector_failure(port, name)
            if failure or not pid_alive(pid) or elapsed > timeout_s:
                raise RuntimeError(f"the peer stopped at {visible}/{expected} rows after {elapsed:.0f} s "
                                   f"(log: {worker.log_path}): {failure or 'worker exited or timed out'}")
            time.sleep(0.25)
        seconds = time.perf_counter() - started
    finally:
        worker.stop()
        if monitor is not None:
            monitor.unwatch("kafka-connect")
        shutil.rmtree(home)
    return {
        "events": len(dataset),
        "seconds": round(seconds, 3),
        "events_per_s": round(len(dataset) / seconds, 1),
        "first_row_s": round(first_row_s or seconds, 3),
        "method": f"Kafka Connect {CONNECT_VERSION} standalone + Debezium JDBC sink, upsert on the primary key; "
                  "timed from launching the worker to the last row holding its newest version",
        "config": {"tasks_max": tasks, "batch_size": batch, "heap_mb": heap_mb},
        "landed_pg": landed.report(schema),
    }
