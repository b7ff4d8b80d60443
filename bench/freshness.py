"""Freshness of the cdc path: from a row's commit on the source to the moment it is visible in the Postgres
warehouse, with the cdc extraction every minute and the streaming job on its processing-time trigger.

    python -m bench.freshness                        # 20 commits/s for 300 s, extraction every 60 s
    python -m bench.freshness --rate 5 --seconds 120

On the local stack (`make up`): a uuid-named schema on the Supabase stand-in (its source DDL, a publication and a
slot of its own), and the run's topic, warehouse schema and indices (bench.scratch), all removed at the end. The
streaming job runs as the other benchmarks start it (bench.pipeline.launcher) with the job's own trigger; the
extraction DAG's schedule is emulated: this process runs the cdc extraction (include.extract.service.run_cdc, as
`python -m include.extract` does; the DAG's task builds the same CdcExtraction) every `--interval` seconds. A writer
commits one new lead per transaction at `--rate`, recording the client's time when COMMIT returned; visibility is
observed as bench.latency observes it (a trigger on the sink tables and a poller), so a figure overstates the true
value by at most one poll (0.1 s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import threading
import time
import uuid

from bench import latency, log_dir, pipeline, report, start_logging
from bench.monitor import Monitor
from bench.scratch import Scratch
from include.connections import pg_session, warehouse_session
from include.entities import LEAD
from include.extract.config import ExtractConfig
from include.extract.service import Endpoints, run_cdc
from include.schema import quote_ident
from include.settings import load_settings
from spark.job_spec import trigger_interval
from spark.streaming_job import JobConfig
from stack.standin import apply_standin

log = logging.getLogger("bench.freshness")


def source_schema(settings, scratch: Scratch, label: str) -> str:
    """A schema of the run on the source with the stand-in's DDL; it, and the slot and publication named like it,
    are dropped at the end."""
    name = scratch.name(label)

    def drop() -> None:
        with pg_session(settings, settings.pg_source_db) as admin:
            admin.autocommit = True
            admin.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                          "WHERE slot_name = %s", [name])
            admin.execute(f"DROP PUBLICATION IF EXISTS {quote_ident(name)}")
            admin.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")

    with pg_session(settings, settings.pg_source_db) as connection:
        connection.execute(f"CREATE SCHEMA {quote_ident(name)}")
        scratch.callback(drop)
        apply_standin(connection, schema=name)
    return name


class Writer:
    """Commits one new lead per transaction at `rate` per second, each reported to `visibility` with its version
    (the source trigger's clock_timestamp()) and the client's time once COMMIT returned."""

    def __init__(self, settings, schema: str, visibility: latency.Visibility):
        self.connection = pg_session(settings, settings.pg_source_db)
        self.insert = (f"INSERT INTO {quote_ident(schema)}.{quote_ident(LEAD.source_table)} (id, nome, email) "
                       "VALUES (%s, %s, %s) RETURNING updated_at")
        self.visibility = visibility
        self.committed = 0

    def commit_one(self) -> None:
        record_id = str(uuid.uuid4())
        [version] = self.connection.execute(self.insert, [record_id, "Freshness", f"{record_id}@bench.invalid"]
                                            ).fetchone()
        self.connection.commit()
        self.visibility.sent(LEAD.name, record_id, version, time.time())
        self.committed += 1

    def run(self, rate: float, seconds: float, stop: threading.Event) -> None:
        started = time.monotonic()
        while not stop.is_set() and self.committed < rate * seconds:
            self.commit_one()
            stop.wait(max(0.0, started + self.committed / rate - time.monotonic()))

    def close(self) -> None:
        self.connection.close()


def measure(settings, scratch: Scratch, monitor: Monitor, rate: float, seconds: float, interval_s: float,
            trigger: str, settle_s: float) -> dict:
    source = source_schema(settings, scratch, "source")
    schema = scratch.pg_schema("freshness")
    with warehouse_session(settings, autocommit=True) as admin:
        for statement in latency.visibility_ddl(schema):
            admin.execute(statement)
    topic = scratch.topic("freshness")
    cdc_settings = settings.model_copy(update={"extract_cdc_slot": source, "extract_cdc_publication": source})
    endpoints = Endpoints(source_schema=source, warehouse_schema=schema, topic=topic)
    config = ExtractConfig(source="cdc")

    def extract() -> dict:
        return run_cdc(settings=cdc_settings, config=config, endpoints=endpoints).as_dict()

    extract()  # creates the publication and the slot (an empty snapshot): the writes below are changes
    driver = pipeline.launcher(settings, scratch, log_dir(settings), monitor)(
        "freshness", topic, schema, scratch.es_indices("freshness"), trigger)
    visibility = latency.Visibility(settings, schema)
    writer = Writer(settings, source, visibility)
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(rate, seconds, stop), name="bench-writer", daemon=True)
    runs = []
    try:
        # One row through the whole path proves the job is up (JVM started, consumer assigned).
        writer.commit_one()
        extract()
        visibility.wait_all(timeout_s=300)
        if visibility.pending_count():
            raise RuntimeError(f"the job made no row visible within 300 s:\n{driver.tail()}")
        visibility.latencies_ms.clear()
        writer.committed = 0
        load_before = os.getloadavg()
        thread.start()
        # The DAG's schedule: a run every interval, the first one an interval after the writes began.
        next_run = time.monotonic() + interval_s
        deadline = next_run + seconds + settle_s
        while time.monotonic() < deadline and (thread.is_alive() or visibility.pending_count()):
            time.sleep(max(0.0, min(next_run, deadline) - time.monotonic()))
            if time.monotonic() >= next_run:
                began = time.monotonic()
                runs.append({**extract(), "seconds": round(time.monotonic() - began, 2)})
                next_run += interval_s
        load_after = os.getloadavg()
        unseen_ms = visibility.pending_ages_ms(time.time())
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
        writer.close()
        driver.stop()
        heap = driver.finish()
        visibility.close()
    seen_ms = visibility.latencies_ms
    if not seen_ms:
        raise RuntimeError(f"no committed row became visible:\n{driver.tail()}")
    points, lower_bounds = latency.distribution(seen_ms, unseen_ms)
    return {
        "rate_per_s": rate, "write_seconds": seconds, "extract_interval_s": interval_s, "trigger_interval": trigger,
        "committed": writer.committed, "visible": len(seen_ms), "not_visible_after_settle": len(unseen_ms),
        "settle_s": settle_s,
        **{f"{name}_s": round(value / 1000, 2) for name, value in points.items()},
        "lower_bounds": lower_bounds,
        "poll_resolution_ms": visibility.poll_s * 1000,
        "load_average": {"before": load_before, "after": load_after},
        "extraction_runs": runs,
        "driver_heap": heap,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20, help="commits per second (one row each)")
    parser.add_argument("--seconds", type=float, default=300, help="how long the writer commits")
    parser.add_argument("--interval", type=float, default=60, help="seconds between extraction runs (the DAG's)")
    parser.add_argument("--trigger", default=trigger_interval(JobConfig.trigger), help="the streaming job's processing-time trigger")
    parser.add_argument("--settle", type=float, default=180,
                        help="seconds after the last commit to wait for the rows still not visible")
    parser.add_argument("--results-dir", type=type(report.RESULTS_DIR), default=report.RESULTS_DIR)
    parser.add_argument("--stem", default="freshness-cdc")
    args = parser.parse_args(argv)
    start_logging()
    for chatty in ("kafka", "elastic_transport", "include.schema"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    settings = load_settings()
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    monitor = Monitor().start()
    try:
        with Scratch(settings) as scratch:
            result = measure(settings, scratch, monitor, args.rate, args.seconds, args.interval, args.trigger,
                             args.settle)
    finally:
        monitor.stop()
    result = {"command": " ".join(["python -m bench.freshness", *(argv if argv is not None else sys.argv[1:])]),
              "started_at": started_at, "cpus": os.cpu_count(), **result}
    path = report.write_json(result, args.results_dir, args.stem)
    print(f"{result['visible']} of {result['committed']} commits visible: p50 {result['p50_s']} s, "
          f"p99 {result['p99_s']} s, max {result['max_s']} s ({path})")
    return 0 if not result["not_visible_after_settle"] else 1


if __name__ == "__main__":
    sys.exit(main())
