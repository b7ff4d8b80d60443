"""The streaming job: topic `eventos` -> validate and route -> Postgres and Elasticsearch, newest version wins.

    python -m spark.streaming_job --checkpoint-root /var/lib/pipeline/checkpoints [options]
    spark-submit spark/streaming_job.py --checkpoint-root /var/lib/pipeline/checkpoints [options]

This module only wires the Kafka source and the foreachBatch sink (spark/sinks/batch.py), which renders each
micro-batch with the transform's function (spark/transforms.py) in the same pass that stages it. A sink failure is
not caught anywhere: the query fails, the process exits non-zero, the checkpoint keeps the failed batch
uncommitted and the next start replays it.

Triggers: `processing-time=<n> <unit>` runs until stopped; `available-now` processes what the topic holds at
start (in batches of at most --max-offsets-per-trigger) and exits, for scheduled catch-up runs and tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (spark-submit spark/streaming_job.py): import the repo's packages, not spark/'s modules.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from include.contract import (DEFAULT_MAX_BYTES_PER_TRIGGER, DEFAULT_MAX_VERSION_SKEW_SECONDS,  # noqa: E402
                              MAX_PAYLOAD_BYTES)
from include.entities import ENTITIES  # noqa: E402
from include.settings import Settings, SettingsError, load_settings  # noqa: E402
from spark.job_spec import (AVAILABLE_NOW, DEFAULT_QUERY_NAME, check_query_name, processing_time,  # noqa: E402
                            trigger_interval)

log = logging.getLogger("spark.streaming_job")

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A job argument is invalid; the message names it."""


@dataclass(frozen=True)
class JobConfig:
    checkpoint_root: Path
    query_name: str = DEFAULT_QUERY_NAME
    trigger: str = processing_time("30 seconds")
    max_offsets_per_trigger: int = 50_000
    # Spark 4.1's Kafka source bounds a micro-batch by offsets only (maxOffsetsPerTrigger; there is no bytes-based
    # option), so a byte budget becomes an offset bound through the largest message the job accepts: 512 MB is
    # 2,048 messages of 256 KB, whose merge statements (about 35 ms per MB on a busy 2-core machine) stay well
    # inside the 60 s statement timeout, which a batch would otherwise exceed on every replay.
    max_bytes_per_trigger: int = DEFAULT_MAX_BYTES_PER_TRIGGER
    starting_offsets: str = "earliest"
    topic: str | None = None  # None: the settings' topic (PIPELINE_KAFKA_TOPIC)
    pg_schema: str | None = None
    es_index_prefix: str = ""
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    max_version_skew_seconds: int = DEFAULT_MAX_VERSION_SKEW_SECONDS
    # Metadata of this many batches stays in the checkpoint: enough to rewind by hand after an incident, bounded
    # so the folder does not grow without limit. The query keeps no state, so recovery needs only the last one.
    min_batches_to_retain: int = 100

    @property
    def offsets_per_trigger(self) -> int:
        """maxOffsetsPerTrigger: the offset count, lowered so a batch of messages of the largest accepted size
        stays within the byte budget."""
        return max(1, min(self.max_offsets_per_trigger, self.max_bytes_per_trigger // self.max_payload_bytes))

    @property
    def checkpoint_location(self) -> Path:
        return self.checkpoint_root / self.query_name

    def trigger_options(self) -> dict:
        """Keyword arguments of DataStreamWriter.trigger."""
        interval = trigger_interval(self.trigger)
        return {"availableNow": True} if interval is None else {"processingTime": interval}

    def validate(self) -> "JobConfig":
        if not str(self.checkpoint_root).strip():
            raise ConfigError("--checkpoint-root is required")
        for option, check, value in (("--query-name", check_query_name, self.query_name),
                                     ("--trigger", trigger_interval, self.trigger)):
            try:
                check(value)
            except ValueError as error:
                raise ConfigError(f"{option}: {error}") from None
        for name in ("max_offsets_per_trigger", "max_bytes_per_trigger", "max_payload_bytes",
                     "min_batches_to_retain"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_version_skew_seconds < 0:
            raise ConfigError(f"--max-version-skew-seconds must not be negative, got {self.max_version_skew_seconds}")
        if self.starting_offsets not in ("earliest", "latest"):
            try:
                json.loads(self.starting_offsets)
            except ValueError:
                raise ConfigError(f"--starting-offsets {self.starting_offsets!r}: expected earliest, latest or "
                                  "a JSON object of offsets per topic and partition") from None
        if self.pg_schema:
            from include.connections import check_schema_name

            try:
                check_schema_name(self.pg_schema)
            except ValueError as error:
                raise ConfigError(f"--pg-schema: {error}") from None
        if self.es_index_prefix and self.es_index_prefix != self.es_index_prefix.lower():
            raise ConfigError(f"--es-index-prefix {self.es_index_prefix!r}: index names must be lower case")
        return self


def parse_args(argv: list[str] | None = None) -> JobConfig:
    defaults = JobConfig(checkpoint_root=Path())
    parser = argparse.ArgumentParser(prog="streaming_job", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint-root", required=True, type=Path,
                        help="folder of the query checkpoints (one subfolder per query name); no default on purpose")
    parser.add_argument("--query-name", default=defaults.query_name)
    parser.add_argument("--trigger", default=defaults.trigger,
                        help=f"'{AVAILABLE_NOW}' or '{processing_time('<n> <unit>')}' (default: %(default)s)")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=defaults.max_offsets_per_trigger)
    parser.add_argument("--max-bytes-per-trigger", type=int, default=defaults.max_bytes_per_trigger,
                        help="byte budget of a micro-batch: batches hold at most this over --max-payload-bytes "
                             "offsets (default: %(default)s)")
    parser.add_argument("--starting-offsets", default=defaults.starting_offsets,
                        help="where a new checkpoint starts: earliest, latest or JSON offsets (default: %(default)s)")
    parser.add_argument("--topic", default=None, help="default: PIPELINE_KAFKA_TOPIC")
    parser.add_argument("--pg-schema", default=None,
                        help="warehouse schema to write (search_path); default: the connection's search_path")
    parser.add_argument("--es-index-prefix", default=defaults.es_index_prefix,
                        help="prefix of the Elasticsearch index names (<prefix>_<index>)")
    parser.add_argument("--max-payload-bytes", type=int, default=defaults.max_payload_bytes,
                        help="larger messages go to the dead-letter table (default: %(default)s)")
    parser.add_argument("--max-version-skew-seconds", type=int, default=defaults.max_version_skew_seconds,
                        help="messages whose version is further ahead of the executor's clock go to the dead-letter "
                             "table (default: %(default)s)")
    parser.add_argument("--min-batches-to-retain", type=int, default=defaults.min_batches_to_retain,
                        help="spark.sql.streaming.minBatchesToRetain (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        return JobConfig(**vars(args)).validate()
    except ConfigError as error:
        parser.error(str(error))


def build_query(spark, config: JobConfig, settings: Settings):
    """Start the query: Kafka source -> MicroBatchSink (documents, then both sinks)."""
    from spark.sinks.batch import MicroBatchSink
    from spark.sinks.elastic import ElasticsearchSink
    from spark.sinks.postgres import PostgresSink
    from spark.sinks.topic import TopicIds
    from spark.transforms import documents_of

    elastic = ElasticsearchSink(settings.es_url, index_prefix=config.es_index_prefix)
    elastic.ensure_indices(ENTITIES)
    documents = documents_of(config.max_payload_bytes, max_version_skew_seconds=config.max_version_skew_seconds)
    topic = config.topic or settings.kafka_topic
    sink = MicroBatchSink(PostgresSink(settings, config.pg_schema), elastic, documents,
                          TopicIds(settings.kafka_bootstrap, topic))
    spark.conf.set("spark.sql.streaming.minBatchesToRetain", str(config.min_batches_to_retain))
    source = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", config.starting_offsets)
        .option("maxOffsetsPerTrigger", str(config.offsets_per_trigger))
        # Offsets that vanished before being read (retention, deleted records, a recreated topic) are skipped
        # rather than stopping the query for good; the sink's offset ledger records each skipped range in
        # lost_offsets, which the status report and the data-quality verdict show (spark/sinks/postgres.py).
        .option("failOnDataLoss", "false")
        # Kafka partitions split into tasks for every core, twice over so a core that ends early takes another:
        # one task per topic partition (3) leaves a core idle half the time on a 2-core machine.
        .option("minPartitions", str(2 * spark.sparkContext.defaultParallelism))
        .load()
    )
    return (
        source.writeStream.queryName(config.query_name)
        .option("checkpointLocation", str(config.checkpoint_location))
        .trigger(**config.trigger_options())
        .foreachBatch(sink)
        .start()
    )


def hit_kafka_metrics_bug(query) -> bool:
    """Did the query die of SPARK-55271 (Spark 4.1.1)? After a restart, the batch replayed from the checkpoint's
    offset log runs and is committed, then progress reporting calls KafkaMicroBatchStream.metrics before the
    source ever fetched its latest offsets, and throws a NullPointerException."""
    failure = query._jsq.exception()  # the JVM StreamingQueryException: PySpark's copy has no structured cause
    cause = failure.get().cause() if failure.isDefined() else None
    if cause is None or cause.getClass().getName() != "java.lang.NullPointerException":
        return False
    top = cause.getStackTrace()[0]
    return top.getClassName().startswith("org.apache.spark.sql.kafka010.KafkaMicroBatchStream") and \
        top.getMethodName() == "metrics"


def run(spark, config: JobConfig, settings: Settings) -> None:
    """Run the query until it ends (available-now) or fails; a failure raises StreamingQueryException."""
    from pyspark.errors import StreamingQueryException

    from include.connections import warehouse_session
    from spark.heartbeat import HeartbeatListener

    listener = HeartbeatListener(lambda: warehouse_session(settings, config.pg_schema))
    spark.streams.addListener(listener)
    try:
        for attempt in (1, 2):
            query = build_query(spark, config, settings)
            log.info("query %s running: trigger %s, checkpoint %s", config.query_name, config.trigger,
                     config.checkpoint_location)
            try:
                query.awaitTermination()
                break
            except StreamingQueryException:
                # Only that upstream bug, only once: the replayed batch is committed by then, so starting the
                # query again continues with the next batch. Any other failure propagates.
                if attempt == 2 or not hit_kafka_metrics_bug(query):
                    raise
                log.warning("query %s hit SPARK-55271 after its replayed batch was committed; starting it again",
                            config.query_name)
        # Progress events reach listeners asynchronously: let the last batch's heartbeat land before returning.
        spark.sparkContext._jsc.sc().listenerBus().waitUntilEmpty()
    finally:
        spark.streams.removeListener(listener)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    config = parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        log.error("bad setting: %s", error)
        return 2
    # Executors' Python workers import spark.sinks.*: give them this interpreter and the repo on their path.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))

    from spark.session import build_session

    spark = build_session(f"streaming_job:{config.query_name}", settings, extra_conf={
        # A driver's output is a log file: the console progress bar would only clutter it.
        "spark.ui.showConsoleProgress": "false",
    })
    try:
        run(spark, config, settings)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
