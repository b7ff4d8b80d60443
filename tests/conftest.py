"""Shared fixtures. Tests against real services own their objects: every topic, Postgres schema and
Elasticsearch index a test uses is uuid-named, created for it and removed afterwards."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from include.settings import SettingsError, airflow_code_environment, load_settings  # noqa: E402


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


# Tests run Airflow on a metadata database and home of their own (created by the e2e fixture `airflow_metadata`,
# removed afterwards), never on those `make airflow` shows the user: their runs, failed ones included, stay theirs.
TEST_AIRFLOW_DB = unique_name("test_airflow")
os.environ["PIPELINE_PG_AIRFLOW_DB"] = TEST_AIRFLOW_DB
os.environ["PIPELINE_AIRFLOW_HOME"] = str(load_settings(require_secrets=False).state_dir / "test-airflow"
                                          / TEST_AIRFLOW_DB)

# Airflow reads its configuration when first imported: point it at the local stack before any test imports it.
try:
    _AIRFLOW_ENVIRONMENT = load_settings().airflow_environment()
except SettingsError:
    # No stack configured yet (e.g. `make test-unit` on a fresh clone): unit tests parse DAGs and need no services,
    # so Airflow gets this repo's code and a SQLite home of its own.
    _AIRFLOW_ENVIRONMENT = {**airflow_code_environment(), "AIRFLOW_HOME": str(REPO_ROOT / ".state" / "airflow-unit")}
# Over whatever the shell exported (`eval "$(python -m stack env)"` names the user's Airflow).
os.environ.update(_AIRFLOW_ENVIRONMENT)


@pytest.fixture(scope="session", autouse=True)
def test_airflow_home_removed():
    """Whatever Airflow writes into the tests' home (DAG parsing does too) goes with the session; the e2e fixture
    `airflow_metadata` drops the database."""
    yield
    shutil.rmtree(os.environ["PIPELINE_AIRFLOW_HOME"], ignore_errors=True)


@pytest.fixture(scope="session")
def settings():
    return load_settings()


@pytest.fixture(scope="session")
def spark():
    """A small local SparkSession: one shuffle partition, no UI, the cached Kafka/JDBC jars on its classpath when the
    stack fetched them (`make up`); without them only the pure transforms' unit tests can use it."""
    from spark.job_spec import jars_dir
    from spark.session import build_session

    settings = load_settings(require_secrets=False)
    session = build_session("pytest", settings, extra_conf={"spark.sql.shuffle.partitions": "1"},
                            connectors=any(jars_dir(settings).glob("*.jar")))
    yield session
    session.stop()


@pytest.fixture
def pg_connect(settings):
    """Connect to a database of the local cluster (the warehouse by default), optionally on a schema; every
    connection carries the statement timeout and is closed at teardown."""
    from include.connections import pg_session

    opened = []

    def connect(database: str | None = None, schema: str | None = None, **kwargs):
        connection = pg_session(settings, database or settings.pg_warehouse_db, schema, **kwargs)
        opened.append(connection)
        return connection

    yield connect
    for connection in opened:
        connection.close()


@pytest.fixture
def pg_schema(settings, pg_connect):
    """A fresh Postgres schema in the warehouse holding the full warehouse DDL; dropped afterwards.

    Code under test reaches it through `search_path`, so table names stay those of the registry."""
    from include.schema import apply_sql, quote_ident, warehouse_ddl

    name = unique_name("test")
    admin = pg_connect(autocommit=True)
    admin.execute(f"CREATE SCHEMA {quote_ident(name)}")
    scoped = pg_connect(schema=name)
    apply_sql(scoped, warehouse_ddl())
    yield name
    admin.execute(f"DROP SCHEMA {quote_ident(name)} CASCADE")


@pytest.fixture
def es(settings):
    from elasticsearch import Elasticsearch

    client = Elasticsearch(settings.es_url, request_timeout=30)
    yield client
    client.close()


@contextmanager
def owned_index_prefix(es):
    """A uuid prefix for index names; every index under it is deleted afterwards."""
    prefix = unique_name("test")
    try:
        yield prefix
    finally:
        es.indices.delete(index=f"{prefix}*", ignore_unavailable=True, allow_no_indices=True, expand_wildcards="all")


@contextmanager
def owned_topic(settings):
    """A uuid-named topic with the configured partition count; deleted afterwards."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="pytest")
    name = unique_name("test")
    admin.create_topics([NewTopic(name, num_partitions=settings.kafka_partitions, replication_factor=1)])
    try:
        yield name
    finally:
        admin.delete_topics([name])
        admin.close()


@pytest.fixture
def es_prefix(es):
    with owned_index_prefix(es) as prefix:
        yield prefix


@pytest.fixture
def kafka_topic(settings):
    with owned_topic(settings) as name:
        yield name


@pytest.fixture
def tmp_state(tmp_path):
    """A scratch folder for checkpoints and logs (never /tmp defaults in code under test)."""
    return tmp_path


@pytest.fixture
def source_schema(settings, pg_schema):
    """A schema in the Supabase stand-in database holding the stand-in's tables, dropped afterwards. It takes the
    name of the test's (uuid-named) warehouse schema, which lives in another database."""
    from include.connections import pg_session
    from include.schema import quote_ident
    from stack.standin import apply_standin

    name = pg_schema
    with pg_session(settings, settings.pg_source_db) as admin:
        admin.autocommit = True
        admin.execute(f"CREATE SCHEMA {quote_ident(name)}")
        with pg_session(settings, settings.pg_source_db) as connection:
            apply_standin(connection, schema=name)
        yield name
        admin.execute(f"DROP SCHEMA {quote_ident(name)} CASCADE")


@pytest.fixture
def source_db(settings):
    """A connection to the stand-in database (statement_timeout set); closed afterwards."""
    from include.connections import pg_session

    with pg_session(settings, settings.pg_source_db) as connection:
        yield connection


@pytest.fixture
def warehouse_db(settings, pg_schema):
    """A connection to the test's warehouse schema (statement_timeout set); closed afterwards."""
    from include.connections import pg_session

    with pg_session(settings, settings.pg_warehouse_db, pg_schema) as connection:
        connection.autocommit = True
        yield connection


@pytest.fixture
def endpoints(source_schema, pg_schema, kafka_topic):
    from include.extract.service import Endpoints

    return Endpoints(source_schema=source_schema, warehouse_schema=pg_schema, topic=kafka_topic)


@dataclass(frozen=True)
class Record:
    key: str
    value: dict
    partition: int
    offset: int


@pytest.fixture
def read_topic(settings):
    """Returns a function reading every message on a topic, from the start to its current end."""
    from kafka import KafkaConsumer, TopicPartition

    consumers = []

    def read(topic: str) -> list[Record]:
        consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                 auto_offset_reset="earliest", client_id="pytest-reader")
        consumers.append(consumer)
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records = []
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            for batch in consumer.poll(timeout_ms=1000, max_records=5000).values():
                records.extend(Record(m.key.decode(), json.loads(m.value), m.partition, m.offset) for m in batch)
        return records

    yield read
    for consumer in consumers:
        consumer.close()


@pytest.fixture
def cdc_settings(settings, source_schema):
    """Settings naming a replication slot and a publication of the test's own (the source schema's uuid name);
    both dropped afterwards (a slot left behind makes the source keep WAL for ever)."""
    from include.connections import pg_session
    from include.extract.cdc import drop_slot
    from include.schema import quote_ident

    yield settings.model_copy(update={"extract_cdc_slot": source_schema, "extract_cdc_publication": source_schema})
    with pg_session(settings, settings.pg_source_db) as admin:
        admin.autocommit = True
        drop_slot(admin, source_schema)
        admin.execute(f"DROP PUBLICATION IF EXISTS {quote_ident(source_schema)}")


def pytest_collection_modifyitems(config, items):
    # Marker by folder, so a test cannot forget it and `-m unit` selects exactly the fast ones.
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO_ROOT / "tests").parts
        folder = parts[0] if len(parts) > 1 else "unit"
        marker = {"unit": "unit", "dags": "unit", "integration": "integration", "e2e": "e2e"}.get(folder)
        if marker:
            item.add_marker(getattr(pytest.mark, marker))


os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
# py4j logs at INFO from finalizers during interpreter shutdown, after pytest closed its streams.
logging.getLogger("py4j").setLevel(logging.WARNING)
