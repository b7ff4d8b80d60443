"""The streaming job's spec, shared by the job and by whoever starts it (the supervisor plugin, the orchestration
config, the benchmark): trigger names, the query-name rule, the default name, the connector jars and the Spark
properties every session gets. Importing it loads no pyspark, so DAG parsing can use it."""

from __future__ import annotations

import re
from pathlib import Path

from include.settings import Settings

SPARK_VERSION = "4.1.1"
# Maven coordinates of what the job needs beyond pyspark; stack/maven/spark-jars.pom.xml fetches them.
CONNECTOR_ARTIFACTS = (
    f"org.apache.spark:spark-sql-kafka-0-10_2.13:{SPARK_VERSION}",
    "org.postgresql:postgresql:42.7.8",
)

DEFAULT_QUERY_NAME = "eventos_to_warehouse"
# Query names become checkpoint folder names: path-safe, no dots (so never "." or "..").
QUERY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

# Trigger kinds; the job's --trigger is `available-now` or `processing-time=<n> <unit>`.
PROCESSING_TIME = "processing-time"
AVAILABLE_NOW = "available-now"
TRIGGER_KINDS = (PROCESSING_TIME, AVAILABLE_NOW)
_INTERVAL = re.compile(r"^\d+\s*(milliseconds?|seconds?|minutes?|hours?)$")

# Arrow batches to the Python workers (mapInArrow) are bounded in bytes as well as in records (10,000 by default):
# with 256 KB messages, 10,000 records would be 2.5 GB in one JVM buffer (in local mode, the driver's heap).
ARROW_MAX_BYTES_PER_BATCH = 32 * 1024 * 1024


def check_query_name(name: str) -> str:
    if not QUERY_NAME_PATTERN.fullmatch(name or ""):
        raise ValueError(f"query name {name!r}: letters, digits, '_' and '-' only, at most 64 "
                         "(it names the checkpoint folder)")
    return name


def processing_time(interval: str) -> str:
    """The --trigger argument of a processing-time query, e.g. processing_time("30 seconds")."""
    return f"{PROCESSING_TIME}={interval}"


def trigger_interval(trigger: str) -> str | None:
    """The interval of a processing-time --trigger, None for available-now; ValueError for anything else."""
    if trigger == AVAILABLE_NOW:
        return None
    kind, _, interval = trigger.partition("=")
    if kind != PROCESSING_TIME or not _INTERVAL.match(interval.strip()):
        raise ValueError(f"trigger {trigger!r}: expected '{AVAILABLE_NOW}' or "
                         f"'{PROCESSING_TIME}=<n> <milliseconds|seconds|minutes|hours>'")
    return interval.strip()


def jars_dir(settings: Settings) -> Path:
    return settings.state_dir / "jars" / "spark"


def connector_jars(settings: Settings) -> list[Path]:
    jars = sorted(jars_dir(settings).glob("*.jar"))
    if not jars:
        raise FileNotFoundError(
            f"no Spark connector jars in {jars_dir(settings)}: run `make up` (python -m stack fetch) first"
        )
    return jars


def session_conf(settings: Settings) -> dict[str, str]:
    """Spark properties of every session the project starts, in-process or through spark-submit."""
    return {
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.local.dir": str(settings.state_dir / "spark" / "local"),
        "spark.sql.execution.arrow.maxBytesPerBatch": str(ARROW_MAX_BYTES_PER_BATCH),
    }
