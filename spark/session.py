"""Builds SparkSessions for local runs and tests with the connector jars the stack cached from Maven Central."""

from __future__ import annotations

from pathlib import Path

from include.settings import Settings

SPARK_VERSION = "4.1.1"
# Maven coordinates of what the job needs beyond pyspark; stack/maven/spark-jars.pom.xml fetches them.
CONNECTOR_ARTIFACTS = (
    f"org.apache.spark:spark-sql-kafka-0-10_2.13:{SPARK_VERSION}",
    "org.postgresql:postgresql:42.7.8",
)


def jars_dir(settings: Settings) -> Path:
    return settings.state_dir / "jars" / "spark"


def connector_jars(settings: Settings) -> list[Path]:
    jars = sorted(jars_dir(settings).glob("*.jar"))
    if not jars:
        raise FileNotFoundError(
            f"no Spark connector jars in {jars_dir(settings)}: run `make up` (python -m stack fetch) first"
        )
    return jars


# Arrow batches to the Python workers (mapInArrow) are bounded in bytes as well as in records (10,000 by default):
# with 256 KB messages, 10,000 records would be 2.5 GB in one JVM buffer (in local mode, the driver's heap).
ARROW_MAX_BYTES_PER_BATCH = 32 * 1024 * 1024


def build_session(app_name: str, settings: Settings, extra_conf: dict[str, str] | None = None, *,
                  connectors: bool = True):
    """`connectors=False`: no Kafka source or JDBC (tests of pure transforms on a machine that fetched no jars)."""
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.appName(app_name)
        .master(settings.spark_master)
        .config("spark.jars", ",".join(str(jar) for jar in connector_jars(settings)) if connectors else "")
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.local.dir", str(settings.state_dir / "spark" / "local"))
        .config("spark.sql.execution.arrow.maxBytesPerBatch", str(ARROW_MAX_BYTES_PER_BATCH))
    )
    for key, value in (extra_conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
