"""Rows per second from the Postgres source (Supabase stand-in) to Kafka through the real extraction, and changes
per second of the cdc extraction over the same rows.

    .state/venv/bin/python bench/extract_bench.py [--rows 200000] [--page-size 5000] [--no-cdc]

Creates a cdc slot and publication on a uuid-named schema of the stand-in (an empty first run), fills the schema
with demo leads, runs one full poller extraction of them into a uuid-named topic (warehouse state in a uuid-named
schema) and then one cdc run over the same rows, now changes in the WAL, into a second topic; checks that each
topic holds exactly that many messages, and drops everything it created (slot and publication included). The figure counts the extraction only: reading, encoding, publishing with
acks=all, waiting for every acknowledgement and committing the cursor after each page. The report also gives
the process's CPU time per row and the machine's load average, since the box is shared: wall-clock rows/s
depends on what else runs, CPU per row much less.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from include.connections import pg_session  # noqa: E402
from include.entities import LEAD  # noqa: E402
from include.extract.config import ExtractConfig  # noqa: E402
from include.extract.demo_data import DemoSize, generate  # noqa: E402
from include.extract.extractor import RunOptions  # noqa: E402
from include.extract.service import Endpoints, run_cdc, run_extraction  # noqa: E402
from include.schema import apply_sql, quote_ident, warehouse_ddl  # noqa: E402
from include.settings import load_settings  # noqa: E402
from stack.standin import apply_standin  # noqa: E402


def _topic_size(settings, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, client_id="extract-bench")
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum(consumer.end_offsets(partitions).values()) - sum(consumer.beginning_offsets(partitions).values())
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--page-size", type=int, default=ExtractConfig().page_size)
    parser.add_argument("--pages-in-flight", type=int, default=RunOptions().pages_in_flight)
    parser.add_argument("--no-cdc", dest="cdc", action="store_false", help="time the poller only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from kafka.admin import KafkaAdminClient, NewTopic

    settings = load_settings()
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="extract-bench")
    source_admin = pg_session(settings, settings.pg_source_db)
    warehouse_admin = pg_session(settings, settings.pg_warehouse_db)
    source_admin.autocommit = warehouse_admin.autocommit = True
    cdc_settings = settings.model_copy(update={"extract_cdc_slot": name, "extract_cdc_publication": name})
    cdc_topic = f"{name}_cdc"
    try:
        admin.create_topics([NewTopic(topic, num_partitions=settings.kafka_partitions, replication_factor=1)
                             for topic in (name, cdc_topic)])
        for connection in (source_admin, warehouse_admin):
            connection.execute(f"CREATE SCHEMA {quote_ident(name)}")
        with pg_session(settings, settings.pg_warehouse_db, name) as connection:
            apply_sql(connection, warehouse_ddl())
        cdc_endpoints = Endpoints(source_schema=name, warehouse_schema=name, topic=cdc_topic)
        cdc_config = ExtractConfig(source="cdc", page_size=args.page_size)
        with pg_session(settings, settings.pg_source_db) as connection:
            apply_standin(connection, schema=name)
            if args.cdc:
                # The slot exists before the rows: they reach it as changes in the WAL, not as a snapshot.
                run_cdc(settings=cdc_settings, config=cdc_config, endpoints=cdc_endpoints)
            started = time.perf_counter()
            generate(connection, DemoSize(args.rows, sessions_per_lead=0), schema=name, seed=1)
            generate_s = time.perf_counter() - started
        source_admin.execute(f"ANALYZE {quote_ident(name)}.{quote_ident(LEAD.source_table)}")

        options = RunOptions(page_size=args.page_size, pages_in_flight=args.pages_in_flight)
        load_before = os.getloadavg()[0]
        wall, cpu = time.perf_counter(), time.process_time()
        [result] = run_extraction([LEAD.name], options, config=ExtractConfig(source="postgres"),
                                  endpoints=Endpoints(source_schema=name, warehouse_schema=name, topic=name))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

        on_topic = _topic_size(settings, name)
        if result.records.published != args.rows or on_topic != args.rows:
            raise SystemExit(f"published {result.records.published}, topic holds {on_topic}, expected {args.rows}")
        report = {
            "rows": args.rows, "page_size": args.page_size, "pages_in_flight": args.pages_in_flight,
            "pages": result.records.pages, "extract_seconds": round(wall, 2),
            "rows_per_second": round(args.rows / wall), "extract_cpu_seconds": round(cpu, 2),
            "cpu_us_per_row": round(cpu / args.rows * 1e6, 1), "load_average_1min": [load_before, os.getloadavg()[0]],
            "generate_rows_per_second": round(args.rows / generate_s),
        }
        if args.cdc:
            load_before = os.getloadavg()[0]
            wall, cpu = time.perf_counter(), time.process_time()
            changes = run_cdc(settings=cdc_settings, config=cdc_config, endpoints=cdc_endpoints)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            on_topic = _topic_size(settings, cdc_topic)
            if changes.published != args.rows or on_topic != args.rows:
                raise SystemExit(f"cdc published {changes.published}, topic holds {on_topic}, expected {args.rows}")
            report |= {"cdc_seconds": round(wall, 2), "cdc_changes_per_second": round(args.rows / wall),
                       "cdc_cpu_us_per_change": round(cpu / args.rows * 1e6, 1),
                       "cdc_load_average_1min": [load_before, os.getloadavg()[0]]}
        print(json.dumps(report))
        return report
    finally:
        source_admin.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                             "WHERE slot_name = %s", [name])
        source_admin.execute(f"DROP PUBLICATION IF EXISTS {quote_ident(name)}")
        for connection in (source_admin, warehouse_admin):
            connection.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")
            connection.close()
        admin.delete_topics([name, cdc_topic])
        admin.close()


if __name__ == "__main__":
    main()
