"""The machine's limits for the two sinks, without Spark: what the pipeline is measured against.

Both load the documents the streaming job renders (spark/validation.py), rendered before the clock starts.
limit-pg: each entity's rows COPYed into the job's staging table, then the job's own merge statements (newest row
per id, upsert; include/sql/stream_merge.sql), one connection per entity in parallel, one transaction each.
limit-es: bulk indexing of the same documents with ids and external versions, batch size and parallelism picked
by a short sweep on a sample first.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from bench.data import Dataset
from bench.scratch import Landed, Scratch, es_landed
from include.connections import warehouse_session
from include.entities import ENTITIES, Entity
from include.schema import STREAM_STAGE_TABLE, render_sql_macro
from spark.sinks.postgres import STALE_STAGE_AFTER, WINNERS_TABLE, copy_statement
from spark.validation import render, validate


def _documents(dataset: Dataset) -> list[tuple]:
    """(entity, id, version, deleted, doc) of every message, as the job renders it."""
    documents = []
    for m in dataset.messages:
        verdict = validate(m.value, len(m.value))
        if verdict.reason is not None:
            raise ValueError(f"the data set holds an invalid message ({verdict.reason}): {m.value[:200]!r}")
        documents.append((verdict.entity, verdict.key, verdict.version, verdict.position, verdict.deleted,
                          render(verdict.row)))
    return documents


def _staged_rows(documents: list[tuple], entity: Entity, token: str) -> list[tuple]:
    """Staging rows (stream_staging.sql) of one entity's documents; the offset orders equal versions."""
    received = dt.datetime.now(dt.timezone.utc)
    return [(token, 0, entity.name, record_id, version, position, deleted, received, "bench", 0, offset, document)
            for offset, (of, record_id, version, position, deleted, document) in enumerate(documents)
            if of is entity]


def _load_entity(settings, schema: str, entity: Entity, token: str, rows: list[tuple]) -> dict:
    params = {"token": token, "entity": entity.name, "stale_after": STALE_STAGE_AFTER}
    timings = {}
    with warehouse_session(settings, schema) as connection:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            with cursor.copy(copy_statement()) as copy:
                for row in rows:
                    copy.write_row(row)
            timings["copy_s"] = time.perf_counter() - started
            cursor.execute(render_sql_macro("stream_merge.sql", "winners", stage=STREAM_STAGE_TABLE,
                                            winners=WINNERS_TABLE), params)
            # The upsert covers winners lo..hi (a range only narrower while the sink isolates a refused row).
            params.update(lo=1, hi=cursor.rowcount)
            cursor.execute(render_sql_macro("stream_merge.sql", "upsert", entity=entity, winners=WINNERS_TABLE),
                           params)
            timings["upsert_s"] = time.perf_counter() - started - timings["copy_s"]
            upserted = cursor.rowcount
            cursor.execute(render_sql_macro("stream_merge.sql", "clear_stage", stage=STREAM_STAGE_TABLE), params)
        connection.commit()
        timings["total_s"] = time.perf_counter() - started
    return {"rows": len(rows), "upserted": upserted, **{k: round(v, 3) for k, v in timings.items()}}


def limit_pg(settings, scratch: Scratch, dataset: Dataset, landed: Landed) -> dict:
    schema = scratch.pg_schema("limit_pg")
    # A token per entity: each connection merges and clears only its own rows of the shared staging table.
    tokens = {entity: str(uuid.uuid4()) for entity in ENTITIES}
    documents = _documents(dataset)
    prepared = {entity: _staged_rows(documents, entity, tokens[entity]) for entity in ENTITIES}
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(ENTITIES)) as pool:
        futures = {entity.name: pool.submit(_load_entity, settings, schema, entity, tokens[entity], rows)
                   for entity, rows in prepared.items()}
        per_entity = {name: future.result() for name, future in futures.items()}
    seconds = time.perf_counter() - started
    return {
        "events": len(dataset),
        "seconds": round(seconds, 3),
        "events_per_s": round(len(dataset) / seconds, 1),
        "method": "COPY of the job's documents into its staging table + its newest-per-id and upsert "
                  "statements, one connection per entity",
        "per_entity": per_entity,
        "landed_pg": landed.report(schema),
    }


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def external_version(version: dt.datetime | None, position: str | None) -> int:
    """The sink's Elasticsearch version (include/sql/sink_order.sql): epoch microseconds, or LSN << 16 + index."""
    if version is not None:
        return (version - _EPOCH) // dt.timedelta(microseconds=1)
    lsn, index = (int(part, 16) for part in position.split("/"))
    return (lsn << 16) + min(index, 65_535)


def es_actions(dataset: Dataset, indices: dict[str, str]) -> list[dict]:
    return [{"_index": indices[entity.name], "_id": record_id, "version_type": "external_gte", "_source": document,
             "version": external_version(version, position)}
            for entity, record_id, version, position, _, document in _documents(dataset)]


def _bulk(es, actions: list[dict], chunk_size: int, threads: int) -> int:
    """Index the actions; a version conflict (an older version arriving after a newer one) is a success."""
    from elasticsearch import helpers

    indexed = 0
    for ok, item in helpers.parallel_bulk(es, actions, thread_count=threads, chunk_size=chunk_size,
                                          max_chunk_bytes=50 * 1024 * 1024, raise_on_error=False):
        result = item["index"]
        if not ok and result.get("status") != 409:
            raise RuntimeError(f"bulk item failed: {result}")
        indexed += 1
    return indexed


def _timed_bulk(es, indices: dict[str, str], actions: list[dict], chunk_size: int, threads: int) -> float:
    started = time.perf_counter()
    _bulk(es, actions, chunk_size, threads)
    es.indices.refresh(index=list(indices.values()))
    return time.perf_counter() - started


def limit_es(scratch: Scratch, dataset: Dataset, sweep_sample: int, chunk_sizes=(500, 2000),
             thread_counts=(2, 4)) -> dict:
    es = scratch.es
    sample = dataset.head(min(sweep_sample, len(dataset)))
    sweep = []
    for number, (chunk_size, threads) in enumerate(itertools.product(chunk_sizes, thread_counts)):
        indices = scratch.es_indices(f"limit_es_sweep{number}")
        seconds = _timed_bulk(es, indices, es_actions(sample, indices), chunk_size, threads)
        sweep.append({"chunk_size": chunk_size, "threads": threads, "events": len(sample),
                      "events_per_s": round(len(sample) / seconds, 1)})
        es.indices.delete(index=list(indices.values()))
    best = max(sweep, key=lambda trial: trial["events_per_s"])
    indices = scratch.es_indices("limit_es")
    actions = es_actions(dataset, indices)
    seconds = _timed_bulk(es, indices, actions, best["chunk_size"], best["threads"])
    return {
        "events": len(dataset),
        "seconds": round(seconds, 3),
        "events_per_s": round(len(dataset) / seconds, 1),
        "method": "helpers.parallel_bulk of the job's documents with _id and external_gte versions, then a refresh",
        "chunk_size": best["chunk_size"],
        "threads": best["threads"],
        "sweep": sweep,
        "landed_es": es_landed(es, indices, dataset.distinct_ids),
    }
