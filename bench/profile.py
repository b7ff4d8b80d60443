"""Where a micro-batch's time goes: the streaming job's own foreachBatch (spark/sinks/batch.py) run on the whole
topic as one batch, in its own driver, reporting its own timings.

    python -m bench.profile --topic T --schema S --index-prefix P --result FILE

Reported, in seconds:
  validate   a probe before the batch: read the topic, validate and render every message, count the documents
             (the first part of the sink's stage job, which pays it again)
  stage      the sink's Spark job: Kafka read, validation and rendering, COPY into Postgres staging, in one pass
             (the probe ran first and paid the warm-up: the two are not to be subtracted)
  merge      the merge transaction (newest row per id, deletions, upsert, dead letters)
  bulk       the Elasticsearch bulk, which starts inside the merge and runs beside the upsert
  batch      the whole foreachBatch call
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from include.settings import load_settings


def profile(topic: str, schema: str, index_prefix: str, max_payload_bytes: int) -> dict:
    from bench.scratch import read_topic
    from spark.session import build_session
    from spark.sinks.batch import MicroBatchSink
    from spark.sinks.elastic import ElasticsearchSink
    from spark.sinks.postgres import PostgresSink
    from spark.transforms import documents_of, to_documents

    settings = load_settings()
    spark = build_session("bench-profile", settings)
    try:
        batch = read_topic(spark, settings, topic)
        events = batch.count()
        started = time.perf_counter()
        batch.transform(to_documents(max_payload_bytes)).count()
        validate = time.perf_counter() - started

        elastic = ElasticsearchSink(settings.es_url, index_prefix=index_prefix)
        sink = MicroBatchSink(PostgresSink(settings, schema), elastic, documents_of(max_payload_bytes))
        report = sink.write(batch, 0)
    finally:
        spark.stop()
    return {
        "events": events,
        "batch_s": report.seconds,
        "events_per_s": round(events / report.seconds, 1),
        "validate_probe_s": round(validate, 3),
        "stage_s": report.merged.stage_seconds,
        "merge_s": report.merged.merge_seconds,
        "bulk_s": report.bulk_seconds,
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
    parser.add_argument("--max-payload-bytes", type=int, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    args.result.write_text(json.dumps(profile(args.topic, args.schema, args.index_prefix, args.max_payload_bytes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
