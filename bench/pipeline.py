"""The pipeline as shipped: the streaming job's own entry point (spark/streaming_job.py), in its own driver
process, reading a topic that already holds the data set, available-now, into both sinks.

Three figures come out of one run: `seconds` is the job's processing, the sum of its micro-batches' durations
(Spark's progress reports, as the job's listener records them in stream_heartbeats), the figure to hold against
the sinks' limits and the naive writer, which are timed without process start-up either; `pg_visible_s` is launch
to the last row visible in Postgres with its newest version, polled every 0.25 s, the figure to hold against the
peer, which is timed the same way; `wall_s` is launch to exit.

The backlog run measures the driver's heap (jstat on its JVM) while it works through a large backlog in batches
bounded by maxOffsetsPerTrigger.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from bench.data import Dataset, EventGenerator
from bench.job import Driver
from bench.monitor import Monitor
from bench.scratch import Landed, Scratch, es_landed, produce
from include.connections import warehouse_session
from include.entities import ENTITIES
from include.schema import quote_ident
from spark.job_spec import AVAILABLE_NOW, processing_time

JOB_MODULE = "spark.streaming_job"


def job_args(settings, scratch: Scratch, label: str, topic: str, schema: str, trigger: str,
             max_offsets_per_trigger: int | None = None) -> list[str]:
    """The job's command line for one run of the benchmark: its own topic, schema, indices and checkpoint."""
    checkpoint = settings.state_dir / "bench" / scratch.name(label)
    scratch.callback(shutil.rmtree, checkpoint, ignore_errors=True)
    args = ["--topic", topic, "--checkpoint-root", str(checkpoint), "--query-name", scratch.name(label),
            "--pg-schema", schema, "--es-index-prefix", scratch.name(label), "--starting-offsets", "earliest",
            "--trigger", trigger]
    if max_offsets_per_trigger:
        args += ["--max-offsets-per-trigger", str(max_offsets_per_trigger)]
    return args


def processing_seconds(settings, schema: str, query_name: str) -> dict:
    """Batches, rows and processing time of a query from its heartbeats: each batch's rows over its rate is the
    time Spark reports the batch took (triggerExecution)."""
    with warehouse_session(settings) as connection:
        rows = connection.execute(
            f"SELECT batch_id, input_rows, rows_per_second FROM {quote_ident(schema)}.stream_heartbeats "
            f"WHERE query_name = %s AND input_rows > 0 ORDER BY batch_id", [query_name]).fetchall()
    if not rows:
        raise RuntimeError(f"query {query_name} recorded no batch with input rows in {schema}.stream_heartbeats")
    seconds = sum(input_rows / rate for _, input_rows, rate in rows)
    return {"batches": len(rows), "input_rows": sum(r[1] for r in rows), "seconds": seconds}


def seconds_to_visible(driver: Driver, landed: Landed, schema: str, timeout_s: float) -> float | None:
    """Seconds from the driver's launch until every newest version is visible in Postgres (None if it exits or
    times out first)."""
    expected = landed.expected_total()
    while driver.process.poll() is None and time.perf_counter() - driver.started < timeout_s:
        if landed.newest_rows(schema) >= expected:
            return time.perf_counter() - driver.started
        time.sleep(0.25)
    return None


def run_available_now(settings, scratch: Scratch, label: str, topic: str, log_dir: Path, monitor: Monitor,
                      max_offsets_per_trigger: int | None, timeout_s: float,
                      landed: Landed | None = None) -> tuple[str, dict, dict]:
    """(schema, the run's figures, the driver's heap) of one available-now run over `topic`; with `landed`, the
    figures include pg_visible_s."""
    schema = scratch.pg_schema(label)
    indices = scratch.es_indices(label)
    args = job_args(settings, scratch, label, topic, schema, AVAILABLE_NOW, max_offsets_per_trigger)
    driver = Driver(label, JOB_MODULE, args, log_dir / f"{scratch.name(label)}.log", monitor, heap=True)
    visible = {}
    try:
        if landed is not None:
            visible["pg_visible_s"] = seconds_to_visible(driver, landed, schema, timeout_s)
        wall = driver.wait(timeout_s)
    finally:
        heap = driver.finish()
    if visible and visible["pg_visible_s"] is None:
        raise RuntimeError(f"{label}: the driver exited before every newest version was visible in {schema}")
    processing = processing_seconds(settings, schema, scratch.name(label))
    return schema, {"wall_s": round(wall, 3), "indices": indices, **visible, **processing}, heap


def measure(settings, scratch: Scratch, dataset: Dataset, landed: Landed, log_dir: Path, monitor: Monitor,
            progress, timeout_s: float = 3600) -> dict:
    topic = scratch.topic("pipeline")
    with progress(len(dataset), "producing") as bar:
        produce(settings, topic, ((m.key, m.value) for m in dataset.messages), bar)
    schema, run, heap = run_available_now(settings, scratch, "pipeline", topic, log_dir, monitor, None, timeout_s,
                                          landed)
    if run["input_rows"] != len(dataset):
        raise RuntimeError(f"the job's batches read {run['input_rows']} rows; {len(dataset)} were produced")
    return {
        "events": len(dataset),
        "seconds": round(run["seconds"], 3),
        "events_per_s": round(len(dataset) / run["seconds"], 1),
        "wall_s": run["wall_s"],
        "wall_events_per_s": round(len(dataset) / run["wall_s"], 1),
        "pg_visible_s": round(run["pg_visible_s"], 3),
        "pg_visible_events_per_s": round(len(dataset) / run["pg_visible_s"], 1),
        "batches": run["batches"],
        "method": "spark/streaming_job.py, trigger available-now, its own driver process",
        "driver_heap": heap,
        "landed_pg": landed.report(schema),
        "landed_es": es_landed(scratch.es, run["indices"], dataset.distinct_ids),
    }


def launcher(settings, scratch: Scratch, log_dir: Path, monitor: Monitor) -> Callable:
    """Starts the job with a processing-time trigger (for the latency run); returns its Driver."""

    def launch(label: str, topic: str, schema: str, indices: dict, trigger_interval: str) -> Driver:
        args = job_args(settings, scratch, label, topic, schema, processing_time(trigger_interval))
        return Driver(label, JOB_MODULE, args, log_dir / f"{scratch.name(label)}.log", monitor, heap=True)

    return launch


def backlog(settings, scratch: Scratch, events: int, seed: int, max_offsets_per_trigger: int, log_dir: Path,
            monitor: Monitor, progress, timeout_s: float = 7200) -> dict:
    """Generate and produce `events` fresh events straight to a topic, then let the job work through them."""
    topic = scratch.topic("backlog")
    generator = EventGenerator(seed + 1)
    new_records = {entity.name: 0 for entity in ENTITIES}

    def pairs():
        for kind, message, _ in generator.stream(events):
            if kind in new_records:
                new_records[kind] += 1
            yield message.key, message.value

    with progress(events, "backlog") as bar:
        produce(settings, topic, pairs(), bar)
    schema, run, heap = run_available_now(settings, scratch, "backlog", topic, log_dir, monitor,
                                          max_offsets_per_trigger, timeout_s)
    with warehouse_session(settings) as connection:
        rows = {entity.name: connection.execute(
            f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(entity.table)}").fetchone()[0]
            for entity in ENTITIES}
    return {
        "events": events,
        "max_offsets_per_trigger": max_offsets_per_trigger,
        "batches": run["batches"],
        "seconds": round(run["seconds"], 3),
        "events_per_s": round(events / run["seconds"], 1),
        "wall_s": run["wall_s"],
        **heap,
        "landed_pg": {"complete": rows == new_records, "rows": rows, "expected": new_records},
    }
