"""Where a micro-batch's time goes: the streaming job's own foreachBatch (spark/sinks/batch.py) run on the whole
topic as one batch, in its own driver, with its sinks timed from the outside.

    python -m bench.profile --topic T --schema S --index-prefix P --result FILE

Reported, in seconds:
  validate   a probe before the batch: parse, route and validate every message and count the outcomes, which is
             the sink's first action (its cost is paid again inside the batch, where the result is cached)
  stage      Postgres staging of the batch's documents through JDBC; it includes computing the newest row per id
             and rendering the documents, which Spark does lazily on the first write that needs them
  merge      the set-based merge transaction
  bulk       the Elasticsearch bulk writes (reads the cached documents)
  other      the rest of foreachBatch: the outcome count on the cached rows, caching
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from include.settings import load_settings


def profile(topic: str, schema: str, index_prefix: str, shuffle_partitions: int, max_payload_bytes: int) -> dict:
    from spark.session import build_session
    from spark.sinks.batch import MicroBatchSink
    from spark.sinks.elastic import ElasticsearchSink
    from spark.sinks.postgres import PostgresSink
    from spark.transforms import OUTCOME, with_validation

    timings: dict = {}

    class TimedPostgres(PostgresSink):
        def write(self, documents):
            started = time.perf_counter()
            merged = super().write(documents)
            timings.update(postgres_write=time.perf_counter() - started, stage=merged.stage_seconds,
                           merge=merged.merge_seconds)
            return merged

    class TimedElastic(ElasticsearchSink):
        def write(self, documents, suppressed):
            started = time.perf_counter()
            indexed = super().write(documents, suppressed)
            timings["bulk"] = round(time.perf_counter() - started, 3)
            return indexed

    settings = load_settings()
    spark = build_session("bench-profile", settings, {"spark.sql.shuffle.partitions": str(shuffle_partitions)})
    try:
        batch = (spark.read.format("kafka")
                 .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
                 .option("subscribe", topic)
                 .option("startingOffsets", "earliest")
                 .option("endingOffsets", "latest")
                 .load())
        events = batch.count()
        # As the job does: validation applied to the source, the sink gets validated rows.
        validated = batch.transform(with_validation(max_payload_bytes))
        started = time.perf_counter()
        validated.groupBy(OUTCOME).count().collect()
        validate = time.perf_counter() - started

        sink = MicroBatchSink(TimedPostgres(settings, schema), TimedElastic(settings.es_url, index_prefix=index_prefix))
        started = time.perf_counter()
        sink(validated, 0)
        total = time.perf_counter() - started
    finally:
        spark.stop()
    return {
        "events": events,
        "batch_s": round(total, 3),
        "events_per_s": round(events / total, 1),
        "validate_probe_s": round(validate, 3),
        "stage_s": timings["stage"],
        "merge_s": timings["merge"],
        "bulk_s": timings["bulk"],
        "other_s": round(total - timings["postgres_write"] - timings["bulk"], 3),
    }


def measure(settings, scratch, dataset, log_dir: Path, monitor=None, timeout_s: float = 3600) -> dict:
    """Profile the whole data set as one batch, from its own topic into a fresh schema and indices."""
    from bench.job import Driver
    from bench.scratch import produce
    from spark.streaming_job import JobConfig

    topic = scratch.topic("profile")
    produce(settings, topic, ((m.key, m.value) for m in dataset.messages))
    schema = scratch.pg_schema("profile")
    scratch.es_indices("profile")
    result_path = log_dir / f"{scratch.name('profile')}.json"
    args = ["--topic", topic, "--schema", schema, "--index-prefix", scratch.name("profile"),
            "--shuffle-partitions", str(JobConfig.shuffle_partitions),
            "--max-payload-bytes", str(JobConfig.max_payload_bytes), "--result", str(result_path)]
    driver = Driver("profile", "bench.profile", args, log_dir / f"{scratch.name('profile')}.log", monitor)
    try:
        driver.wait(timeout_s)
    finally:
        driver.finish()
    result = json.loads(result_path.read_text())
    result_path.unlink()
    if result["events"] != len(dataset):
        raise RuntimeError(f"the profile read {result['events']} events from {topic}; {len(dataset)} were produced")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--index-prefix", required=True)
    parser.add_argument("--shuffle-partitions", type=int, required=True)
    parser.add_argument("--max-payload-bytes", type=int, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    args.result.write_text(json.dumps(profile(args.topic, args.schema, args.index_prefix, args.shuffle_partitions,
                                              args.max_payload_bytes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
