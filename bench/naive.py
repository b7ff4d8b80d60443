"""The user's old approach for the Postgres side, as the benchmark's floor: Spark reads the topic, and each
partition sends one `INSERT ... ON CONFLICT (id) DO UPDATE` per row, each its own transaction.

It runs in its own process (its own Spark driver) over a whole topic. Per-row writes are too slow to push all N
events through, so the benchmark gives it a topic holding the first part of the data set only, and labels the
rate as measured on that sample.

    python -m bench.naive --topic T --schema S --result FILE     # writes {events, seconds, events_per_s}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from include.entities import BY_TIPO_EVENTO, Entity
from include.schema import quote_ident
from include.settings import load_settings
from spark.validation import PAYLOAD


def upsert_statement(entity: Entity) -> str:
    """One row's newest-wins upsert, as a per-row writer would hand-write it (identifiers from the registry)."""
    columns = [c.name for c in entity.columns]
    table, key, version = (quote_ident(n) for n in (entity.table, entity.key, entity.order_column))
    updates = ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in columns if c != entity.key)
    return (f"INSERT INTO {table} AS t ({', '.join(quote_ident(c) for c in columns)}) "
            f"VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON CONFLICT ({key}) DO UPDATE SET {updates} WHERE t.{version} <= EXCLUDED.{version}")


def row_values(entity: Entity, message: dict, raw: str) -> list:
    from psycopg.types.json import Jsonb

    values = []
    for column in entity.columns:
        if column.name == PAYLOAD:
            values.append(Jsonb(json.loads(raw)))
        elif column.type == "jsonb" and message.get(column.name) is not None:
            values.append(Jsonb(message[column.name]))
        else:
            values.append(message.get(column.name))
    return values


def write_partition(dsn: str, schema: str):
    """The foreachPartition function: one connection per partition, one statement and commit per row."""

    def write(rows) -> None:
        import psycopg

        statements = {tipo: upsert_statement(entity) for tipo, entity in BY_TIPO_EVENTO.items()}
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute("SELECT set_config('search_path', %s, false)", [schema])
            for row in rows:
                message = json.loads(row.value)
                entity = BY_TIPO_EVENTO[message["tipo_evento"]]
                connection.execute(statements[entity.tipo_evento], row_values(entity, message, row.value))

    return write


def run(topic: str, schema: str) -> dict:
    from bench.scratch import read_topic
    from spark.session import build_session

    settings = load_settings()
    spark = build_session("bench-naive", settings)
    try:
        batch = read_topic(spark, settings, topic).selectExpr("CAST(value AS STRING) AS value")
        events = batch.count()
        started = time.perf_counter()
        batch.foreachPartition(write_partition(settings.pg_dsn(settings.pg_warehouse_db), schema))
        seconds = time.perf_counter() - started
    finally:
        spark.stop()
    return {"events": events, "seconds": round(seconds, 3), "events_per_s": round(events / seconds, 1)}


def measure(settings, scratch, dataset, sample_size: int, log_dir: Path, monitor=None,
            timeout_s: float = 1800) -> dict:
    """Run the naive writer on the first `sample_size` events, in its own driver; the rate with its sample."""
    from bench.job import Driver
    from bench.scratch import Landed, produce

    sample = dataset.head(min(sample_size, len(dataset)))
    topic = scratch.topic("naive")
    produce(settings, topic, ((m.key, m.value) for m in sample.messages))
    schema = scratch.pg_schema("naive")
    result_path = log_dir / f"{scratch.name('naive')}.json"
    driver = Driver("naive", "bench.naive", ["--topic", topic, "--schema", schema, "--result", str(result_path)],
                    log_dir / f"{scratch.name('naive')}.log", monitor)
    try:
        driver.wait(timeout_s)
    finally:
        driver.finish()
    result = json.loads(result_path.read_text())
    result_path.unlink()
    landed = Landed(settings, sample.newest)
    try:
        report = landed.report(schema)
    finally:
        landed.close()
    return {
        **result,
        "sampled_from": len(dataset),
        "projected_full_s": round(len(dataset) / result["events_per_s"], 1),
        "method": "Spark batch read of the topic, foreachPartition, one INSERT ... ON CONFLICT and commit per row; "
                  "timed around the foreachPartition action",
        "landed_pg": report,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--result", type=Path, required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)
    args.result.write_text(json.dumps(run(args.topic, args.schema)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
