"""Time and peak memory of the content reconciler over N rows per entity, equal and with drift, and the repair.

    .state/venv/bin/python -m bench.reconcile_bench [--rows 1000000] [--drift 1000] [--entity lead ...]

Per entity, in uuid-named objects of its own (a source schema, a warehouse schema, an index prefix, a topic): rows
from the benchmark's generator (bench/data.py) are loaded into the Supabase stand-in (extracted entities), copied to
the warehouse, and bulk-indexed into Elasticsearch as the sink writes them (_id = id, external version = the version
column's epoch microseconds). Then `python -m include.reconcile` runs in a child process three times: on equal
stores, after `--drift` ids were made to differ (Elasticsearch missing, older and extra documents; the source newer
and deleted rows; for events, which have no source, Elasticsearch only), and as the repair (Elasticsearch written
from Postgres, the source's rows re-published to the topic; applying them is the streaming job's work, measured by
the pipeline benchmark). Each run's wall time and the child's peak RSS are recorded; loading is not. Everything
created is dropped afterwards. Results: bench/results/reconcile-<rows>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.data import EventGenerator
from include.connections import pg_session
from include.contract import encode, record_message
from include.entities import BY_NAME, Entity
from include.schema import apply_sql, ensure_index, quote_ident, warehouse_ddl
from include.settings import REPO_ROOT, load_settings
from stack.standin import apply_standin

CHUNK = 5_000
RESULTS = REPO_ROOT / "bench" / "results"


def _micros(moment) -> int:
    import datetime as dt

    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)


def _copy_value(entity: Entity, name: str, value):
    from psycopg.types.json import Jsonb

    field = next(f for f in entity.fields if f.name == name)
    return Jsonb(value) if field.type == "jsonb" and value is not None else value


def load(settings, entity: Entity, rows: int, name: str, es, index: str) -> None:
    """`rows` generated records into the source (if the entity has one), the warehouse and the index."""
    generator = EventGenerator(seed=7)
    columns = ", ".join(quote_ident(f) for f in entity.field_names)
    target = (f"{quote_ident(name)}.{quote_ident(entity.source_table)}" if entity.source_table
              else quote_ident(entity.table))
    first = pg_session(settings, settings.pg_source_db if entity.source_table else settings.pg_warehouse_db,
                             None if entity.source_table else name)

    def bulk(lines: list[bytes]) -> None:
        response = es.options(request_timeout=300).bulk(index=index, operations=b"".join(lines))
        if response["errors"]:
            raise SystemExit(f"bulk errors: {[i for i in response['items'] if i['index'].get('error')][:3]}")

    with first, ThreadPoolExecutor(max_workers=2) as pool:
        pending = []
        with first.cursor().copy(f"COPY {target} ({columns}) FROM STDIN") as copy:
            lines: list[bytes] = []
            for number in range(rows):
                row = generator._new(entity)
                copy.write_row([_copy_value(entity, f, row.get(f)) for f in entity.field_names])
                record_id = str(row[entity.key])
                lines.append(json.dumps({"index": {"_id": record_id, "version": _micros(row[entity.version_column]),
                                                   "version_type": "external_gte"}}).encode() + b"\n")
                lines.append(encode(record_message(entity, row, generator.now)) + b"\n")
                if len(lines) >= 2 * CHUNK:
                    pending.append(pool.submit(bulk, lines))
                    lines = []
                    if len(pending) > 2:
                        pending.pop(0).result()
            if lines:
                pending.append(pool.submit(bulk, lines))
        first.commit()
        for future in pending:
            future.result()
    if entity.source_table:
        with pg_session(settings, settings.pg_source_db) as source, \
                pg_session(settings, settings.pg_warehouse_db, name) as warehouse:
            with source.cursor().copy(f"COPY {target} ({columns}) TO STDOUT") as out, \
                    warehouse.cursor().copy(f"COPY {quote_ident(entity.table)} ({columns}) FROM STDIN") as into:
                for data in out:
                    into.write(data)
            warehouse.commit()
    es.indices.refresh(index=index)


def make_drift(settings, entity: Entity, count: int, name: str, es, index: str) -> dict:
    """`count` distinct ids made to differ, spread over every kind the entity can have: Elasticsearch missing (deleted
    at its own version, as a lost bulk leaves it), older (Postgres and the source moved on) and extra documents; for
    extracted entities also source rows newer than Postgres and rows deleted at the source."""
    table = quote_ident(entity.table)
    key, version = quote_ident(entity.key), quote_ident(entity.version_column)
    has_source = entity.source_table is not None
    # Shares of the drifted ids: (missing, older, extra[, newer at the source, deleted at the source]).
    shares = (0.25, 0.25, 0.1, 0.25, 0.15) if has_source else (0.4, 0.4, 0.2)
    sizes = [int(count * share) for share in shares]
    sizes[-1] += count - sum(sizes)
    with pg_session(settings, settings.pg_warehouse_db, name) as warehouse:
        warehouse.autocommit = True
        ids = [r[0] for r in warehouse.execute(f"SELECT {key}::text FROM {table} ORDER BY random() LIMIT %s",
                                               [count]).fetchall()]
        groups, at = [], 0
        for size in sizes:
            groups.append([] if len(groups) == 2 else ids[at:at + size])  # extras are new documents
            at += len(groups[-1])
        missing, older = groups[0], groups[1]
        for record_id in missing:
            current = es.get(index=index, id=record_id, source=False)["_version"]
            es.delete(index=index, id=record_id, version=current, version_type="external_gte")
        if has_source:
            source_table = f"{quote_ident(name)}.{quote_ident(entity.source_table)}"
            newer, deleted = groups[3], groups[4]
            with pg_session(settings, settings.pg_source_db) as source:
                # The source's trigger stamps an update with its clock; the warehouse takes the same version.
                moved = source.execute(f"UPDATE {source_table} SET {version} = {version} WHERE {key} = ANY(%s::uuid[]) "
                                       f"RETURNING {key}, {version}", [older + newer]).fetchall()
                source.execute(f"DELETE FROM {source_table} WHERE {key} = ANY(%s::uuid[])", [deleted])
                source.commit()
            held = set(older)
            moved = [(record_id, moment) for record_id, moment in moved if str(record_id) in held]
            warehouse.execute(f"UPDATE {table} t SET {version} = m.v FROM unnest(%s::uuid[], %s::timestamptz[]) "
                              f"AS m (id, v) WHERE t.{key} = m.id", [[r for r, _ in moved], [v for _, v in moved]])
        else:
            warehouse.execute(f"UPDATE {table} SET {version} = {version} + interval '1 second' "
                              f"WHERE {key} = ANY(%s::uuid[])", [older])
    for extra in (str(uuid.uuid4()) for _ in range(sizes[2])):
        es.index(index=index, id=extra, version=1, version_type="external_gte", document={entity.key: extra})
    es.indices.refresh(index=index)
    kinds = ("elasticsearch_missing", "elasticsearch_older", "elasticsearch_extra", "source_newer", "source_deleted")
    return dict(zip(kinds, sizes))


def reconcile(settings, entity: Entity, name: str, repair: bool) -> dict:
    command = [sys.executable, "-m", "include.reconcile", "--entity", entity.name, "--warehouse-schema", name,
               "--source-schema", name, "--index-prefix", name, "--topic", name] + (["--repair"] if repair else [])
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    if run.returncode not in (0, 1):
        raise SystemExit(f"reconcile failed:\n{run.stderr[-3000:]}")
    output = json.loads(run.stdout)
    [report] = output["entities"]
    return {"seconds": round(seconds, 1), "peak_rss_mb": output["peak_rss_mb"], "drift": report["drift"],
            "stores": [{k: s[k] for k in ("store", "reference_rows", "store_rows", "buckets", "differing_buckets",
                                          "missing", "extra", "older", "newer", "seconds")} for s in report["stores"]],
            "plan": report["plan"], "repaired": {k: report.get(k) for k in ("elasticsearch", "republished")},
            "load_average_1min": [load_before, os.getloadavg()[0]]}


def bench_entity(settings, entity: Entity, rows: int, drift: int) -> dict:
    from elasticsearch import Elasticsearch
    from kafka.admin import KafkaAdminClient, NewTopic

    name = f"bench_{uuid.uuid4().hex[:12]}"
    index = entity.index_name(name)
    es = Elasticsearch(settings.es_url, request_timeout=120)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="reconcile-bench")
    source_admin = pg_session(settings, settings.pg_source_db)
    warehouse_admin = pg_session(settings, settings.pg_warehouse_db)
    source_admin.autocommit = warehouse_admin.autocommit = True
    try:
        admin.create_topics([NewTopic(name, num_partitions=settings.kafka_partitions, replication_factor=1)])
        for connection in (source_admin, warehouse_admin):
            connection.execute(f"CREATE SCHEMA {quote_ident(name)}")
        with pg_session(settings, settings.pg_source_db) as connection:
            apply_standin(connection, schema=name)
        with pg_session(settings, settings.pg_warehouse_db, name) as connection:
            apply_sql(connection, warehouse_ddl())
        ensure_index(es, entity, index)
        es.indices.put_settings(index=index, settings={"refresh_interval": "-1"})
        started = time.perf_counter()
        load(settings, entity, rows, name, es, index)
        es.indices.put_settings(index=index, settings={"refresh_interval": None})
        loaded_s = time.perf_counter() - started
        for connection, table in ((warehouse_admin, f"{quote_ident(name)}.{quote_ident(entity.table)}"),) + (
                ((source_admin, f"{quote_ident(name)}.{quote_ident(entity.source_table)}"),)
                if entity.source_table else ()):
            connection.execute(f"VACUUM ANALYZE {table}")
        result = {"entity": entity.name, "rows": rows, "load_seconds": round(loaded_s, 1)}
        print(json.dumps(result), flush=True)
        result["equal"] = reconcile(settings, entity, name, repair=False)
        print(json.dumps(result["equal"]), flush=True)
        result["drift_made"] = make_drift(settings, entity, drift, name, es, index)
        result["drifted"] = reconcile(settings, entity, name, repair=False)
        print(json.dumps(result["drifted"]), flush=True)
        result["repair"] = reconcile(settings, entity, name, repair=True)
        print(json.dumps(result["repair"]), flush=True)
        return result
    finally:
        for connection in (source_admin, warehouse_admin):
            connection.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")
            connection.close()
        es.indices.delete(index=index, ignore_unavailable=True)
        es.close()
        admin.delete_topics([name])
        admin.close()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--drift", type=int, default=1_000)
    # Seeding and drifting work on version columns: an entity ordered by source position (chat_session) is not
    # measured here.
    versioned = sorted(name for name, entity in BY_NAME.items() if entity.version_column)
    parser.add_argument("--entity", action="append", choices=versioned,
                        help="repeatable; default: every entity with a version column")
    parser.add_argument("--output", type=Path, help="default: bench/results/reconcile-<rows>.json")
    args = parser.parse_args(argv)
    # Loading a million rows is one COPY per table, far longer than the pipeline's statement timeout; the
    # reconciler itself runs (in its child process) with the configured one.
    settings = load_settings().model_copy(update={"pg_statement_timeout_ms": 3_600_000})
    report = {"command": " ".join(["python -m bench.reconcile_bench"] + (argv if argv is not None else sys.argv[1:])),
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
              "entities": []}
    output = args.output or RESULTS / f"reconcile-{args.rows}.json"
    for name in args.entity or versioned:
        report["entities"].append(bench_entity(settings, BY_NAME[name], args.rows, args.drift))
        output.write_text(json.dumps(report, indent=2) + "\n")  # after each entity: a long run keeps what it measured
        print(f"written {output}", flush=True)
    return report


if __name__ == "__main__":
    main()
