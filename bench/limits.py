"""The machine's limits for the two sinks, without Spark: what the pipeline is measured against.

limit-pg: each entity's rows COPYed, as the documents the job stages, into the job's staging table and merged with
its own upsert (include/sql/stream_merge.sql), one connection per entity in parallel, one transaction each.
limit-es: bulk indexing of the same documents with ids and external versions, batch size and parallelism picked
by a short sweep on a sample first.

Both time only the load: decoding the JSON messages into rows and documents happens before the clock starts.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from bench.data import Dataset
from bench.scratch import Landed, Scratch, connect, es_landed, version_number
from include.entities import ENTITIES, Entity
from include.schema import STREAM_STAGE_TABLE, quote_ident, render_sql_macro
from spark.sinks.postgres import STALE_STAGE_AFTER
from spark.transforms import PAYLOAD


def column_value(column: str, message: dict, raw: bytes):
    """A message's value for one warehouse column, as the job's document holds it."""
    if column == PAYLOAD:
        return json.loads(raw)
    return message.get(column)


def _staged_rows(dataset: Dataset, entity: Entity, token: str) -> list[tuple]:
    """(stage_token, kind, deleted, doc) rows: each message as the document the streaming job would stage."""
    columns = [c.name for c in entity.columns]
    rows = []
    for m in dataset.messages:
        if m.entity == entity.name:
            message = json.loads(m.value)
            document = {column: column_value(column, message, m.value) for column in columns}
            rows.append((token, entity.name, False, json.dumps(document, ensure_ascii=False)))
    return rows


def _load_entity(settings, schema: str, entity: Entity, token: str, rows: list[tuple]) -> dict:
    stage = quote_ident(STREAM_STAGE_TABLE)
    params = {"token": token, "entity": entity.name, "stale_after": STALE_STAGE_AFTER}
    timings = {}
    with connect(settings, schema) as connection:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            with cursor.copy(f"COPY {stage} (stage_token, kind, deleted, doc) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            timings["copy_s"] = time.perf_counter() - started
            cursor.execute(render_sql_macro("stream_merge.sql", "upsert", entity=entity, stage=STREAM_STAGE_TABLE),
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
    prepared = {entity: _staged_rows(dataset, entity, tokens[entity]) for entity in ENTITIES}
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
        "method": "COPY of the documents into the streaming job's staging table + its upsert, "
                  "one connection per entity",
        "per_entity": per_entity,
        "landed_pg": landed.report(schema),
    }


def es_document(entity: Entity, message: dict, raw: bytes) -> dict:
    document = {c.name: message.get(c.name) for c in entity.columns}
    if PAYLOAD in document:
        document[PAYLOAD] = json.loads(raw)
    return document


def es_actions(dataset: Dataset, indices: dict[str, str]) -> list[dict]:
    by_name = {entity.name: entity for entity in ENTITIES}
    actions = []
    for m in dataset.messages:
        entity = by_name[m.entity]
        message = json.loads(m.value)
        actions.append({
            "_index": indices[entity.name],
            "_id": message[entity.key],
            "version": version_number(message[entity.version_column]),
            "version_type": "external_gte",
            "_source": es_document(entity, message, m.value),
        })
    return actions


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
        "method": "helpers.parallel_bulk with _id and external_gte versions, then a refresh",
        "chunk_size": best["chunk_size"],
        "threads": best["threads"],
        "sweep": sweep,
        "landed_es": es_landed(es, indices, dataset.distinct_ids),
    }
