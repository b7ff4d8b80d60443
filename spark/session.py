"""Builds SparkSessions for local runs and tests with the connector jars the stack cached from Maven Central."""

from __future__ import annotations

from include.settings import Settings
from spark.job_spec import connector_jars, session_conf


def build_session(app_name: str, settings: Settings, extra_conf: dict[str, str] | None = None, *,
                  connectors: bool = True):
    """`connectors=False`: no Kafka source or JDBC (tests of pure transforms on a machine that fetched no jars)."""
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.appName(app_name)
        .master(settings.spark_master)
        .config("spark.jars", ",".join(str(jar) for jar in connector_jars(settings)) if connectors else "")
        .config("spark.driver.memory", settings.spark_driver_memory)
    )
    for key, value in {**session_conf(settings), **(extra_conf or {})}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
