"""The streaming job's operation as the DAGs and plugins see it: a view of the `PIPELINE_STREAM_*`,
`PIPELINE_SUPERVISOR_*`, `PIPELINE_WATCHDOG_*` and related settings (declared in include/settings.py, documented
in .env.example)."""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from include.contract import DEFAULT_MAX_BYTES_PER_TRIGGER, DEFAULT_MAX_VERSION_SKEW_SECONDS
from include.orchestration.health import HealthPolicy
from include.orchestration.supervision import QueryFiles
from include.settings import Settings, SettingsError, load_settings
from spark.job_spec import AVAILABLE_NOW, check_query_name, processing_time, session_conf


def watchdog_interval(environ: Mapping[str, str] | None = None) -> dt.timedelta:
    """The watchdog DAG's schedule, read when the DAG file is parsed (so no secret is needed)."""
    return dt.timedelta(minutes=load_settings(environ, require_secrets=False).watchdog_interval_minutes)


def deploy_gate_timeout(environ: Mapping[str, str] | None = None) -> dt.timedelta:
    """The deploy DAG's data-quality gate timeout, read when the DAG file is parsed."""
    return dt.timedelta(seconds=load_settings(environ, require_secrets=False).deploy_gate_timeout_seconds)


@dataclass(frozen=True)
class StreamOpsConfig:
    settings: Settings
    checkpoint_root: Path
    query_name: str
    trigger_seconds: int
    pg_schema: str | None
    es_index_prefix: str
    max_version_skew_seconds: int
    max_bytes_per_trigger: int
    source_schema: str | None
    stop_grace_seconds: float
    max_failures: int
    failure_window: dt.timedelta
    backoff_seconds: float
    backoff_max_seconds: float
    health: HealthPolicy
    recovery_timeout: dt.timedelta
    retention: dt.timedelta

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> StreamOpsConfig:
        s = load_settings(environ)
        return cls(
            settings=s,
            checkpoint_root=s.stream_checkpoint_root or s.state_dir / "checkpoints",
            query_name=_query_name(s.stream_query_name),
            trigger_seconds=s.stream_trigger_seconds,
            pg_schema=s.stream_pg_schema or None,
            es_index_prefix=s.stream_es_index_prefix,
            max_version_skew_seconds=s.stream_max_version_skew_seconds,
            max_bytes_per_trigger=s.stream_max_bytes_per_trigger,
            source_schema=s.dq_source_schema or None,
            stop_grace_seconds=s.stream_stop_grace_seconds,
            max_failures=s.supervisor_max_failures,
            failure_window=dt.timedelta(minutes=s.supervisor_failure_window_minutes),
            backoff_seconds=s.supervisor_backoff_seconds,
            backoff_max_seconds=s.supervisor_backoff_max_seconds,
            health=HealthPolicy(
                stall_after=dt.timedelta(seconds=s.watchdog_stall_seconds),
                startup_grace=dt.timedelta(seconds=s.watchdog_startup_grace_seconds),
                max_lag=s.watchdog_max_lag,
            ),
            recovery_timeout=dt.timedelta(seconds=s.watchdog_recovery_seconds),
            retention=dt.timedelta(days=s.checkpoint_retention_days),
        )

    @property
    def checkpoint(self) -> Path:
        return self.checkpoint_root / self.query_name

    @property
    def files(self) -> QueryFiles:
        return QueryFiles(self.checkpoint)

    @property
    def releases_root(self) -> Path:
        return self.settings.state_dir / "releases"


def _query_name(name: str) -> str:
    try:
        return check_query_name(name)
    except ValueError as error:
        raise SettingsError(f"PIPELINE_STREAM_QUERY_NAME: {error}") from None


def spark_conf(config: StreamOpsConfig) -> dict[str, str]:
    """Spark properties every supervised driver gets (the job adds its own, e.g. minBatchesToRetain)."""
    # The driver's output is the task log and the driver log file: INFO would log every micro-batch forever.
    return {**session_conf(config.settings), "spark.log.level": "WARN"}


def driver_environment(config: StreamOpsConfig) -> dict[str, str]:
    """The driver's environment: the same settings Airflow resolved (the job reads them, not `.env`, since its
    code runs from the release zip), the venv's Python, and no inherited PYTHONPATH, so every module the job
    imports comes from its release and not from the working tree."""
    return {**config.settings.as_environment(), "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": ""}


def job_arguments(config: StreamOpsConfig, available_now: bool) -> list[str]:
    """spark/streaming_job.py's command line for the supervised query."""
    arguments = ["--checkpoint-root", str(config.checkpoint_root), "--query-name", config.query_name,
                 "--topic", config.settings.kafka_topic,
                 "--trigger", AVAILABLE_NOW if available_now else processing_time(f"{config.trigger_seconds} seconds")]
    if config.pg_schema:
        arguments += ["--pg-schema", config.pg_schema]
    if config.es_index_prefix:
        arguments += ["--es-index-prefix", config.es_index_prefix]
    # Only when it differs from the job's default: a rollback to a release older than the option still starts.
    if config.max_version_skew_seconds != DEFAULT_MAX_VERSION_SKEW_SECONDS:
        arguments += ["--max-version-skew-seconds", str(config.max_version_skew_seconds)]
    if config.max_bytes_per_trigger != DEFAULT_MAX_BYTES_PER_TRIGGER:
        arguments += ["--max-bytes-per-trigger", str(config.max_bytes_per_trigger)]
    return arguments
