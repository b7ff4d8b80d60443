"""Fixtures for the extraction's tests on the real Postgres and Kafka: a Supabase stand-in schema of the test's
own, endpoints pointing one run at it, and a reader of everything on a topic."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest


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
def restricted_source_db(settings, source_schema):
    """A connection to the stand-in database as a role of the test's own that may read `source_schema` and
    nothing more: like a hosted Supabase role without pg_read_all_stats, it sees other roles' sessions in
    pg_stat_activity without their transaction start. The role is dropped afterwards."""
    import uuid

    from include.connections import pg_session
    from include.schema import quote_ident

    role, password = f"test_reader_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    with pg_session(settings, settings.pg_source_db) as admin:
        admin.autocommit = True
        admin.execute(f"CREATE ROLE {quote_ident(role)} LOGIN PASSWORD '{password}'")
        admin.execute(f"GRANT USAGE ON SCHEMA {quote_ident(source_schema)} TO {quote_ident(role)}")
        admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {quote_ident(source_schema)} TO {quote_ident(role)}")
        try:
            with pg_session(settings.model_copy(update={"pg_user": role, "pg_password": password}),
                                  settings.pg_source_db) as connection:
                yield connection
        finally:
            admin.execute(f"DROP OWNED BY {quote_ident(role)}")
            admin.execute(f"DROP ROLE {quote_ident(role)}")


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
