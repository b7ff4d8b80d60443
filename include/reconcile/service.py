"""One entity's reconciliation from open connections (`reconcile_entity`, `run_entity`), and the same wired from
the settings (`reconcile`) for the command line, the status report, tests and the benchmark. Airflow's wiring is
in `airflow_tasks`.

Per entity two comparisons: Postgres against the source (extracted entities only) and Elasticsearch against
Postgres. Each counts both stores, picks the bucket width from the larger count, digests both, and lists and merges
only the buckets whose digests differ.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass

from include.contract import MAX_PAYLOAD_BYTES
from include.entities import BY_NAME, ENTITIES, Entity
from include.reconcile.compare import Difference, bucket_digits, compare, count_by_kind, differing_buckets
from include.reconcile.repair import POSTGRES, plan_repair, repair_elasticsearch, republish
from include.reconcile.stores import ElasticStore, SqlStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreDrift:
    """How one store differs from its reference for one entity."""

    entity: str
    store: str  # postgres (against the source) or elasticsearch (against postgres)
    reference: str
    reference_rows: int
    store_rows: int
    buckets: int  # buckets compared
    differing_buckets: int
    differences: tuple[Difference, ...]
    seconds: float

    @property
    def total(self) -> int:
        return len(self.differences)

    def as_dict(self, sample: int = 10) -> dict:
        return {"entity": self.entity, "store": self.store, "reference": self.reference,
                "reference_rows": self.reference_rows, "store_rows": self.store_rows, "buckets": self.buckets,
                "differing_buckets": self.differing_buckets, "drift": self.total,
                **count_by_kind(self.differences), "seconds": round(self.seconds, 2),
                "sample": [[d.id, d.kind, d.expected, d.found] for d in self.differences[:sample]]}


def compare_stores(entity: Entity, reference, checked, ordered: bool = True) -> StoreDrift:
    started = time.monotonic()
    reference_rows, store_rows = reference.count(), checked.count()
    digits = bucket_digits(max(reference_rows, store_rows))
    expected, found = reference.digests(digits), checked.digests(digits)
    buckets = differing_buckets(expected, found)
    differences = compare(reference.pairs(buckets), checked.pairs(buckets), ordered) if buckets else []
    drift = StoreDrift(entity.name, checked.name, reference.name, reference_rows, store_rows,
                       len(expected.keys() | found.keys()), len(buckets), tuple(differences),
                       time.monotonic() - started)
    log.info("%s: %s against %s: %s rows against %s, %s of %s buckets differ, drift %s %s", entity.name,
             drift.store, drift.reference, store_rows, reference_rows, len(buckets), drift.buckets, drift.total,
             count_by_kind(differences))
    return drift


def reconcile_entity(entity: Entity, *, warehouse, es, source=None, warehouse_schema: str | None = None,
                     source_schema: str | None = None, index_prefix: str = "") -> tuple[StoreDrift, ...]:
    """Drift of Postgres against the source (when `source` is given and the entity has one) and of Elasticsearch
    against Postgres. Schemas default to the connections' search_path."""
    postgres = SqlStore(POSTGRES, warehouse, entity, entity.table, warehouse_schema)
    drifts = []
    if source is not None and entity.source_table:
        # The source holds no position: an entity ordered by it is compared with the source by content.
        by_content = entity.ordered_by_position
        checked = SqlStore(POSTGRES, warehouse, entity, entity.table, warehouse_schema, True) if by_content else postgres
        drifts.append(compare_stores(
            entity, SqlStore("source", source, entity, entity.source_table, source_schema, by_content), checked,
            ordered=not by_content))
    drifts.append(compare_stores(entity, postgres, ElasticStore(es, entity.index_name(index_prefix), entity.key)))
    return tuple(drifts)


def run_entity(entity: Entity, *, warehouse, es, source=None, publisher=None, dry_run: bool = True,
               warehouse_schema: str | None = None, source_schema: str | None = None, index_prefix: str = "",
               max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> dict:
    """Compare, plan the repair, and unless `dry_run` carry it out. Returns the drift, the plan and what was done."""
    drifts = reconcile_entity(entity, warehouse=warehouse, es=es, source=source, warehouse_schema=warehouse_schema,
                              source_schema=source_schema, index_prefix=index_prefix)
    plan = plan_repair(entity, {d.store: d.differences for d in drifts})
    report = {"entity": entity.name, "dry_run": dry_run, "drift": sum(d.total for d in drifts),
              "stores": [d.as_dict() for d in drifts], "plan": plan.as_dict()}
    if dry_run:
        return report
    if plan.index or plan.delete:
        report["elasticsearch"] = repair_elasticsearch(plan, entity, warehouse=warehouse, es=es,
                                                       index=entity.index_name(index_prefix),
                                                       warehouse_schema=warehouse_schema)
    if plan.republish:
        if source is None or publisher is None:
            raise ValueError(f"{entity.name}: re-publishing {len(plan.republish)} ids needs the source and a publisher")
        report["republished"] = republish(plan, entity, source=source, warehouse=warehouse, publisher=publisher,
                                          source_schema=source_schema, warehouse_schema=warehouse_schema,
                                          max_payload_bytes=max_payload_bytes)
    log.info("%s: repaired: %s", entity.name, {k: report.get(k) for k in ("elasticsearch", "republished")})
    return report


def reconcile(entity_names: list[str] | None = None, *, dry_run: bool = True, settings=None,
              warehouse_schema: str | None = None, source_schema: str | None = None, index_prefix: str | None = None,
              topic: str | None = None) -> list[dict]:
    """`run_entity` for each named entity (default: all) over connections from the settings; schemas, prefix and
    topic default to the streaming job's configuration (PIPELINE_STREAM_PG_SCHEMA, ..._ES_INDEX_PREFIX,
    PIPELINE_DQ_SOURCE_SCHEMA, PIPELINE_KAFKA_TOPIC)."""
    import psycopg
    from elasticsearch import Elasticsearch

    from include.extract.publisher import KafkaPublisher
    from include.orchestration.config import StreamOpsConfig

    config = StreamOpsConfig.load()
    settings = settings or config.settings
    entities = [BY_NAME[name] for name in entity_names] if entity_names else list(ENTITIES)
    with ExitStack() as stack:
        warehouse = stack.enter_context(psycopg.connect(settings.pg_dsn(settings.pg_warehouse_db)))
        source = stack.enter_context(psycopg.connect(settings.pg_dsn(settings.pg_source_db)))
        es = stack.enter_context(closing(Elasticsearch(settings.es_url, request_timeout=60)))
        publisher = None if dry_run else stack.enter_context(
            KafkaPublisher(settings.kafka_bootstrap, topic or settings.kafka_topic, client_id="reconcile"))
        return [run_entity(entity, warehouse=warehouse, es=es, source=source, publisher=publisher, dry_run=dry_run,
                           warehouse_schema=warehouse_schema or config.pg_schema,
                           source_schema=source_schema or config.source_schema,
                           index_prefix=config.es_index_prefix if index_prefix is None else index_prefix,
                           max_payload_bytes=settings.extract_max_payload_bytes)
                for entity in entities]
