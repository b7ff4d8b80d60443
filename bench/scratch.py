"""What one benchmark run creates on the stack, all uuid-named and removed at the end, and how it checks what landed.

Every measurement writes into its own Postgres schema (the full warehouse DDL, reached through `search_path`,
so the registry's table names are used unchanged), its own Elasticsearch indices and its own Kafka topics.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from contextlib import ExitStack
from typing import Iterable

from include.connections import warehouse_session
from include.entities import ENTITIES, Entity
from include.schema import apply_sql, ensure_index, quote_ident, warehouse_ddl
from include.settings import Settings


class Scratch:
    """Names and creates a run's objects; `close()` drops them all, in reverse order."""

    def __init__(self, settings: Settings):
        from elasticsearch import Elasticsearch

        self.settings = settings
        self.run_id = uuid.uuid4().hex[:10]
        self.es = Elasticsearch(settings.es_url, request_timeout=120)
        self._cleanup = ExitStack()
        self._cleanup.callback(self.es.close)

    def name(self, label: str) -> str:
        return f"bench_{self.run_id}_{label}"

    def pg_schema(self, label: str) -> str:
        schema = self.name(label)
        with warehouse_session(self.settings, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {quote_ident(schema)}")
        self._cleanup.callback(self._drop_schema, schema)
        with warehouse_session(self.settings, schema) as scoped:
            apply_sql(scoped, warehouse_ddl())
        return schema

    def _drop_schema(self, schema: str) -> None:
        with warehouse_session(self.settings, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")

    def es_indices(self, label: str) -> dict[str, str]:
        """entity name -> index, each created with the registry's mapping."""
        prefix = self.name(label)
        self._cleanup.callback(self.es.indices.delete, index=f"{prefix}_*", ignore_unavailable=True,
                               allow_no_indices=True, expand_wildcards="all")
        return {entity.name: ensure_index(self.es, entity, index=f"{prefix}_{entity.index}") for entity in ENTITIES}

    def topic(self, label: str, partitions: int | None = None) -> str:
        from kafka.admin import KafkaAdminClient, NewTopic

        name = self.name(label)
        admin = KafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap, client_id="bench")
        try:
            admin.create_topics([NewTopic(name, partitions or self.settings.kafka_partitions, 1)])
        finally:
            admin.close()
        self._cleanup.callback(self._delete_kafka, topics=[name])
        return name

    def consumer_group(self, group: str) -> None:
        """Remove a consumer group the run's consumers created (Kafka Connect's sink group) at the end."""
        self._cleanup.callback(self._delete_kafka, groups=[group])

    def _delete_kafka(self, topics: list[str] = (), groups: list[str] = ()) -> None:
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap, client_id="bench")
        try:
            if topics:
                admin.delete_topics(list(topics))
            # A group exists only once its consumers committed; one that never did has nothing to delete.
            known = {group["group_id"] for group in admin.list_groups()} if groups else set()
            results = admin.delete_groups([g for g in groups if g in known]) if known & set(groups) else {}
            failed = {group: result for group, result in results.items() if result != "OK"}
            if failed:
                raise RuntimeError(f"deleting consumer groups failed: {failed}")
        finally:
            admin.close()

    def callback(self, function, *args, **kwargs) -> None:
        self._cleanup.callback(function, *args, **kwargs)

    def close(self) -> None:
        self._cleanup.close()

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class Landed:
    """Counts, per entity, the rows of a schema that hold exactly the newest version produced for their id.

    The expected (id, version) pairs are loaded once into a temporary table, so polling while a sink runs costs
    one join per entity."""

    def __init__(self, settings: Settings, newest: dict[str, dict[str, str]]):
        self.connection = warehouse_session(settings, autocommit=True)
        self.expected = {name: len(ids) for name, ids in newest.items()}
        self.connection.execute(
            "CREATE TEMPORARY TABLE bench_expected (entity text, id uuid, version text, "
            "PRIMARY KEY (entity, id, version))")
        with self.connection.cursor() as cursor:
            with cursor.copy("COPY bench_expected (entity, id, version) FROM STDIN") as copy:
                for entity_name, versions in newest.items():
                    for record_id, version in versions.items():
                        copy.write_row((entity_name, record_id, version))
        self.connection.execute("ANALYZE bench_expected")

    def _count(self, schema: str, entity: Entity) -> tuple[int, int]:
        table = f"{quote_ident(schema)}.{quote_ident(entity.table)}"
        order_type = "timestamptz" if entity.version_column else "text"  # expected orders are held as text
        return self.connection.execute(
            f"SELECT (SELECT count(*) FROM {table}), "
            f"(SELECT count(*) FROM {table} t JOIN bench_expected e ON e.entity = %s "
            f"AND e.id = t.{quote_ident(entity.key)} AND e.version::{order_type} = t.{quote_ident(entity.order_column)})",
            [entity.name]).fetchone()

    def newest_rows(self, schema: str, entities: tuple[Entity, ...] = ENTITIES) -> int:
        """Rows already holding their id's newest version: the poll while a sink is running."""
        return sum(self._count(schema, entity)[1] for entity in entities)

    def report(self, schema: str, entities: tuple[Entity, ...] = ENTITIES) -> dict:
        """Per entity: expected distinct ids, rows present, rows holding the newest version; `complete` if equal."""
        per_entity = {}
        for entity in entities:
            rows, newest = self._count(schema, entity)
            per_entity[entity.name] = {"expected": self.expected[entity.name], "rows": rows, "newest": newest}
        complete = all(v["expected"] == v["rows"] == v["newest"] for v in per_entity.values())
        return {"complete": complete, "entities": per_entity}

    def expected_total(self, entities: tuple[Entity, ...] = ENTITIES) -> int:
        return sum(self.expected[e.name] for e in entities)

    def close(self) -> None:
        self.connection.close()


def read_topic(spark, settings: Settings, topic: str):
    """The whole of a topic as one Kafka batch DataFrame."""
    return (spark.read.format("kafka")
            .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
            .option("subscribe", topic)
            .option("startingOffsets", "earliest")
            .option("endingOffsets", "latest")
            .load())


def es_landed(es, indices: dict[str, str], expected: dict[str, int]) -> dict:
    """Per entity: documents in its index after a refresh, against the distinct ids produced."""
    per_entity = {}
    for entity_name, index in indices.items():
        es.indices.refresh(index=index)
        documents = es.count(index=index)["count"]
        per_entity[entity_name] = {"expected": expected[entity_name], "documents": documents}
    return {"complete": all(v["expected"] == v["documents"] for v in per_entity.values()), "entities": per_entity}


def version_number(version: str) -> int:
    """An entity version (ISO-8601 with offset) as microseconds since the epoch: Elasticsearch's external version."""
    moment = dt.datetime.fromisoformat(version)
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)


def produce(settings: Settings, topic: str, pairs: Iterable[tuple[bytes, bytes]], progress=None,
            chunk: int = 20_000) -> int:
    """Send (key, value) pairs to `topic`; returns once the broker acknowledged every one of them."""
    from include.extract.publisher import KafkaPublisher

    sent = 0
    pairs = iter(pairs)
    with KafkaPublisher(settings.kafka_bootstrap, topic, client_id="bench") as publisher:
        while batch := list(itertools.islice(pairs, chunk)):
            sent += publisher.publish(batch)
            if progress is not None:
                progress.update(len(batch))
    return sent
