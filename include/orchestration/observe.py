"""The I/O behind the health classification and the data-quality check: gathers observations, decides nothing.

Postgres connections are DB-API connections (psycopg 2 from Airflow's hook, psycopg 3 in tests) that carry the
statement timeout; each read ends its transaction so no session is left idle in one.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from include.entities import ENTITIES, Entity
from include.orchestration.checkpoint import kafka_lag, last_committed_batch
from include.orchestration.health import JobObservation
from include.orchestration.quality import DriftCount, EntityCounts, LostOffsets, QualityCounts
from include.orchestration.supervision import QueryFiles
from include.schema import render_sql


def _fetch(connection, sql: str, params: dict | None = None) -> list[tuple]:
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params or {})
            return cursor.fetchall()
    finally:
        connection.rollback()


@dataclass(frozen=True)
class Heartbeat:
    last_recorded_at: dt.datetime | None
    age_seconds: float | None


def heartbeat(connection, query_name: str, schema: str | None = None) -> Heartbeat:
    (last, age), = _fetch(connection, render_sql("orchestration_heartbeat.sql", schema=schema),
                          {"query_name": query_name})
    return Heartbeat(last, None if age is None else float(age))


def recently_running_queries(connection, within: dt.timedelta, schema: str | None = None) -> set[str]:
    rows = _fetch(connection, render_sql("orchestration_live_queries.sql", schema=schema),
                  {"within_seconds": within.total_seconds()})
    return {name for name, in rows}


def kafka_end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> offset after the last message; raises if the topic does not exist."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="pipeline-watchdog",
                             request_timeout_ms=20_000)
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise LookupError(f"Kafka topic {topic!r} does not exist on {bootstrap}")
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        consumer.close()


def query_lag(checkpoint: Path, bootstrap: str, topic: str) -> int | None:
    return kafka_lag(topic, kafka_end_offsets(bootstrap, topic), last_committed_batch(checkpoint))


def observe_job(checkpoint: Path, query_name: str, warehouse, bootstrap: str, topic: str,
                schema: str | None = None) -> JobObservation:
    holder = QueryFiles(checkpoint).driver_lock.holder()
    committed = last_committed_batch(checkpoint)
    return JobObservation(
        now=dt.datetime.now(dt.timezone.utc),
        driver_started_at=holder.started_at if holder else None,
        last_heartbeat_at=heartbeat(warehouse, query_name, schema).last_recorded_at,
        last_commit_at=committed.committed_at if committed else None,
        lag=kafka_lag(topic, kafka_end_offsets(bootstrap, topic), committed),
    )


def _row_count(connection, table: str, schema: str | None) -> int:
    (count,), = _fetch(connection, render_sql("quality_row_count.sql", table=table, schema=schema))
    return int(count)


def es_doc_count(es, index: str) -> int:
    from elasticsearch import NotFoundError

    try:
        return int(es.count(index=index)["count"])
    except NotFoundError:
        # A missing index holds no documents; the verdict reports the gap against Postgres.
        return 0


def gather_quality_counts(
    *,
    warehouse,
    source,
    es,
    bootstrap: str,
    topic: str,
    checkpoint: Path,
    query_name: str,
    window_minutes: int,
    warehouse_schema: str | None = None,
    index_prefix: str = "",
    source_schema: str | None = None,
    entities: Iterable[Entity] = ENTITIES,
    compare_content: bool = False,
) -> QualityCounts:
    """Counts for the data-quality verdict. `source` is the Supabase connection (None skips source counts);
    schemas default to each connection's search_path; `index_prefix` is the job's index-name prefix.
    `compare_content` also compares ids and versions across the stores (include/reconcile): the drift."""
    entities = tuple(entities)
    dead: Counter = Counter()
    by_reason: Counter = Counter()
    for entity_name, reason_class, count in _fetch(warehouse, render_sql("quality_dead_letters.sql",
                                                                         schema=warehouse_schema),
                                                   {"window_minutes": window_minutes}):
        dead[entity_name] += int(count)
        by_reason[reason_class] += int(count)
    rows = []
    for entity in entities:
        rows.append(EntityCounts(
            entity=entity.name,
            postgres_rows=_row_count(warehouse, entity.table, warehouse_schema),
            es_docs=es_doc_count(es, entity.index_name(index_prefix)),
            source_rows=(_row_count(source, entity.source_table, source_schema)
                         if source is not None and entity.source_table else None),
            dead_letters=int(dead.pop(entity.name, 0)),
        ))
    lost = _fetch(warehouse, render_sql("quality_lost_offsets.sql", schema=warehouse_schema),
                  {"window_minutes": window_minutes})
    return QualityCounts(
        entities=tuple(rows),
        lost_offsets=tuple(LostOffsets(*row) for row in lost),
        unattributed_dead_letters=int(sum(dead.values())),
        dead_letters_by_reason=dict(by_reason),
        heartbeat_age_seconds=heartbeat(warehouse, query_name, warehouse_schema).age_seconds,
        kafka_lag=query_lag(checkpoint, bootstrap, topic),
        drift=drift_counts(entities, warehouse=warehouse, es=es, source=source, warehouse_schema=warehouse_schema,
                           source_schema=source_schema, index_prefix=index_prefix) if compare_content else None,
    )


def drift_counts(entities: Iterable[Entity], *, warehouse, es, source, warehouse_schema: str | None,
                 source_schema: str | None, index_prefix: str) -> tuple[DriftCount, ...]:
    """Per entity and store, the ids on which it differs from its reference, by kind."""
    from include.reconcile.compare import count_by_kind
    from include.reconcile.service import reconcile_entity

    return tuple(DriftCount(d.entity, d.store, d.reference, **count_by_kind(d.differences))
                 for entity in entities
                 for d in reconcile_entity(entity, warehouse=warehouse, es=es, source=source,
                                           warehouse_schema=warehouse_schema, source_schema=source_schema,
                                           index_prefix=index_prefix))
