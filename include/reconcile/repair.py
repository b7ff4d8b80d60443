"""Repairs what the comparison found, planned first (a pure function) so that a dry run shows exactly what a
repair would do.

- Elasticsearch from Postgres: the warehouse's row of each id Elasticsearch lacks or holds older is indexed with the
  sink's own external versioning (`_id` = id, version = the version column's epoch microseconds, `external_gte`),
  so a newer document written meanwhile wins; an extra document is deleted at the version it was seen with, so a
  document rewritten meanwhile survives.
- Postgres from the source: the source's current row of each id Postgres lacks or holds older is re-published to
  Kafka through the extraction's publisher, so the streaming job applies it as any change, to both sinks. An id
  Postgres holds and the source does not is published as a tombstone, dated at the later of the source's recorded
  deletion and the warehouse's version, so the sinks' newest-wins delete takes it. For an entity ordered by source
  position (compared by content: `different`), rows and tombstones carry the source's WAL position read before the
  rows: later than every change those rows hold. (A transaction that committed just before that reading but was not
  yet visible to the read would lose to the re-published row; the next reconciliation finds and repairs it.)
- What neither path can fix is reported with the reason: a store newer than its reference cannot be moved back by
  newest-wins writes (Elasticsearch newer than Postgres is re-published from the source where there is one).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Sequence

from include.contract import encode, message_key, now_utc, record_message, tombstone_message
from include.entities import SOURCE_POSITION, Entity
from include.reconcile.compare import DIFFERENT, EXTRA, MISSING, OLDER, Difference
from include.reconcile.stores import fetch
from include.schema import render_sql_macro

log = logging.getLogger(__name__)

POSTGRES, ELASTICSEARCH = "postgres", "elasticsearch"
IDS_PER_STATEMENT = 1000
ES_CHUNK_SIZE = 500


@dataclass(frozen=True)
class RepairPlan:
    entity: str
    index: tuple[str, ...] = ()  # ids Elasticsearch gets from Postgres
    delete: tuple[tuple[str, int], ...] = ()  # (Elasticsearch _id, its version) of extra documents
    republish: tuple[str, ...] = ()  # ids whose source row is published again (a tombstone when it is gone)
    unrepairable: tuple[tuple[str, str, str], ...] = ()  # (store, id, reason)

    def as_dict(self, sample: int = 10) -> dict:
        return {"index_in_elasticsearch": len(self.index), "delete_from_elasticsearch": len(self.delete),
                "republish_from_source": len(self.republish), "unrepairable": len(self.unrepairable),
                "unrepairable_sample": [list(item) for item in self.unrepairable[:sample]]}


def plan_repair(entity: Entity, drift: dict[str, Sequence[Difference]]) -> RepairPlan:
    """What repairs `drift` ({store: differences}; `postgres` against the source, `elasticsearch` against
    Postgres)."""
    has_source = entity.source_table is not None
    index, delete, republish, unrepairable = [], [], set(), []
    for d in drift.get(POSTGRES, ()):
        if d.kind in (MISSING, OLDER, EXTRA, DIFFERENT):
            republish.add(d.id)
        else:
            unrepairable.append((POSTGRES, d.id, f"Postgres holds version {d.found}, newer than the source's "
                                                 f"{d.expected}: newest-wins keeps it"))
    for d in drift.get(ELASTICSEARCH, ()):
        if d.kind in (MISSING, OLDER):
            index.append(d.id)
        elif d.kind == EXTRA:
            delete.append((d.raw_id, d.found))
        elif has_source:
            republish.add(d.id)
        else:
            unrepairable.append((ELASTICSEARCH, d.id, f"Elasticsearch holds version {d.found}, newer than "
                                                      f"Postgres's {d.expected}, and there is no source to "
                                                      "re-publish from"))
    return RepairPlan(entity.name, tuple(index), tuple(delete), tuple(sorted(republish)), tuple(unrepairable))


def _chunks(items: Sequence, size: int = IDS_PER_STATEMENT) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def repair_elasticsearch(plan: RepairPlan, entity: Entity, *, warehouse, es, index: str,
                         warehouse_schema: str | None = None) -> dict[str, int]:
    """Writes the plan's Elasticsearch part; returns the bulk outcomes (indexed, deleted, stale, absent, refused)."""
    from spark.sinks.elastic import action, bulk_write

    statement = render_sql_macro("reconcile.sql", "documents", entity=entity, schema=warehouse_schema)

    def actions() -> Iterator[dict]:
        for ids in _chunks(plan.index):
            for record_id, version, document in fetch(warehouse, statement, {"ids": list(ids)}):
                yield action(index, record_id, int(version), False, document)
        for raw_id, version in plan.delete:
            yield action(index, raw_id, version, True, None)

    result = bulk_write(es, actions(), chunk_size=ES_CHUNK_SIZE, max_retries=5, initial_backoff=0.5, max_backoff=30)
    for _, record_id, detail in result.refused:
        log.warning("Elasticsearch refused %s %s: %s", entity.name, record_id, detail)
    es.indices.refresh(index=index)
    return dict(result.counts)


def _source_messages(entity: Entity, ids: Sequence[str], *, source, warehouse, source_schema: str | None,
                     warehouse_schema: str | None, processado_em: dt.datetime) -> tuple[list, Counter]:
    from include.extract.cdc import source_position
    from include.extract.extractor import encode_page
    from include.extract.pgoutput import parse_lsn

    position = None
    if entity.ordered_by_position:
        (lsn,), = fetch(source, render_sql_macro("reconcile.sql", "source_position"))
        position = source_position(parse_lsn(lsn), 0)

    def to_message(entity: Entity, row: dict, processado_em: dt.datetime) -> dict:
        message = record_message(entity, row, processado_em)
        return {**message, SOURCE_POSITION: position} if position else message

    rows = [dict(zip(entity.field_names, row)) for row in fetch(
        source, render_sql_macro("reconcile.sql", "source_rows", entity=entity, schema=source_schema),
        {"ids": list(ids)})]
    messages, rejects = encode_page(entity, rows, to_message, processado_em)
    gone = sorted(set(ids) - {str(row[entity.key]).lower() for row in rows})
    outcome = Counter(records=len(messages), refused=len(rejects))
    for reject in rejects:
        log.warning("cannot re-publish %s: %s", entity.name, reject.reason)
    if gone:
        held = dict(fetch(warehouse, render_sql_macro("reconcile.sql", "versions", entity=entity,
                                                        schema=warehouse_schema), {"ids": gone}))
        # Deletion times are recorded by the stand-in's trigger (stack/), which a position-ordered table never needs.
        deleted_at = {} if position else dict(fetch(
            source, render_sql_macro("reconcile.sql", "source_deletions", schema=source_schema),
            {"entity": entity.name, "ids": gone}))
        for record_id in gone:
            # The later of the two, so the sinks' "delete unless the row is newer" removes the warehouse's row.
            versions = [v for v in (deleted_at.get(record_id), held.get(record_id)) if v is not None]
            if not versions:
                outcome["nothing_to_delete"] += 1
                continue
            message = tombstone_message(entity, record_id, position or max(versions), processado_em)
            messages.append((message_key(entity, message), encode(message)))
            outcome["tombstones"] += 1
    return messages, outcome


def republish(plan: RepairPlan, entity: Entity, *, source, warehouse, publisher, source_schema: str | None = None,
              warehouse_schema: str | None = None, max_payload_bytes: int) -> dict[str, int]:
    """Publishes the source's current rows of the plan's ids (tombstones for those it no longer holds) and waits for
    the broker's acknowledgements; returns what was published."""
    from include.extract.extractor import split_oversized

    processado_em = now_utc()
    total: Counter = Counter()
    for ids in _chunks(plan.republish):
        messages, outcome = _source_messages(entity, ids, source=source, warehouse=warehouse,
                                             source_schema=source_schema, warehouse_schema=warehouse_schema,
                                             processado_em=processado_em)
        messages, oversized = split_oversized(entity, messages, min(max_payload_bytes, publisher.max_value_bytes))
        outcome["refused"] += len(oversized)
        publisher.publish(messages)
        total.update(outcome)
    return dict(total)
