"""Settings of the streaming job's operation, read like every other setting (environment, `.env`, defaults).

| name                                        | default                | meaning                                       |
|---------------------------------------------|------------------------|-----------------------------------------------|
| PIPELINE_STREAM_CHECKPOINT_ROOT             | `<state>/checkpoints`  | one folder per query under it                 |
| PIPELINE_STREAM_QUERY_NAME                  | eventos_to_warehouse   | the query the DAGs supervise                  |
| PIPELINE_STREAM_TRIGGER_SECONDS             | 10                     | processing-time trigger of the long-running job |
| PIPELINE_STREAM_PG_SCHEMA                   | (public)               | warehouse schema the job writes and the checks read |
| PIPELINE_STREAM_ES_INDEX_PREFIX             | (none)                 | prefix of the job's index names (`<prefix>_<index>`) |
| PIPELINE_STREAM_MAX_VERSION_SKEW_SECONDS    | 300                    | versions further ahead of the job's clock are dead letters |
| PIPELINE_DQ_SOURCE_SCHEMA                   | (search_path)          | schema of the Supabase tables the checks count |
| PIPELINE_STREAM_STOP_GRACE_SECONDS          | 30                     | SIGTERM to SIGKILL when stopping a driver     |
| PIPELINE_SUPERVISOR_MAX_FAILURES            | 3                      | within the window: crashes before the supervisor gives up; failures (crashes and forced restarts) before a watchdog run fails |
| PIPELINE_SUPERVISOR_FAILURE_WINDOW_MINUTES  | 30                     | the window                                    |
| PIPELINE_SUPERVISOR_BACKOFF_SECONDS         | 5                      | first resubmit delay after a crash, doubled per crash |
| PIPELINE_SUPERVISOR_BACKOFF_MAX_SECONDS     | 120                    | cap of that delay                             |
| PIPELINE_WATCHDOG_INTERVAL_MINUTES          | 5                      | watchdog schedule (process environment only)  |
| PIPELINE_WATCHDOG_STALL_SECONDS             | 600                    | lag > 0 and no batch completed this long: stalled |
| PIPELINE_WATCHDOG_STARTUP_GRACE_SECONDS     | 180                    | a new driver's start before that clock runs   |
| PIPELINE_WATCHDOG_MAX_LAG                   | 10000                  | more messages waiting: lagging                |
| PIPELINE_WATCHDOG_RECOVERY_SECONDS          | 180                    | how long a restart may take to be healthy     |
| PIPELINE_CHECKPOINT_RETENTION_DAYS          | 7                      | orphaned checkpoint folders older than this go |
| PIPELINE_DEPLOY_GATE_TIMEOUT_SECONDS        | 300                    | how long a deploy's data-quality gate waits (process environment only) |
| PIPELINE_DQ_*                               | see quality.py         | data-quality thresholds                       |
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, TypeVar

from include.contract import DEFAULT_MAX_VERSION_SKEW_SECONDS
from include.orchestration.health import HealthPolicy
from include.orchestration.releases import validate_version
from include.orchestration.supervision import QueryFiles
from include.settings import Settings, SettingsError, load_settings, raw_values

T = TypeVar("T", int, float, str)

WATCHDOG_INTERVAL_SETTING = "PIPELINE_WATCHDOG_INTERVAL_MINUTES"
GATE_TIMEOUT_SETTING = "PIPELINE_DEPLOY_GATE_TIMEOUT_SECONDS"


def setting_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every PIPELINE_* value by the usual precedence. `raw_values` passes on only the foundation's own names from
    the environment, so the names declared here are added from it explicitly (the environment still wins)."""
    environ = dict(os.environ if environ is None else environ)
    return {**raw_values(environ), **{k: v for k, v in environ.items() if k.startswith("PIPELINE_")}}


def read_setting(values: Mapping[str, str], name: str, default: T, minimum: float | None = 0) -> T:
    """`values[name]` converted to the default's type; the default when unset. Names the setting on error."""
    raw = values.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = type(default)(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {type(default).__name__}") from None
    if minimum is not None and isinstance(value, (int, float)) and value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> dt.timedelta:
    """The watchdog DAG's schedule. Read at parse time, so from the process environment only."""
    return dt.timedelta(minutes=read_setting(environ, WATCHDOG_INTERVAL_SETTING, 5, minimum=1))


def deploy_gate_timeout(environ: Mapping[str, str] = os.environ) -> dt.timedelta:
    """The deploy DAG's data-quality gate timeout. Read at parse time, so from the process environment only."""
    return dt.timedelta(seconds=read_setting(environ, GATE_TIMEOUT_SETTING, 300, minimum=1))


@dataclass(frozen=True)
class StreamOpsConfig:
    settings: Settings
    checkpoint_root: Path
    query_name: str
    trigger_seconds: int
    pg_schema: str | None
    es_index_prefix: str
    max_version_skew_seconds: int
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
        settings = load_settings(None if environ is None else dict(environ))
        values = setting_values(environ)
        return cls(
            settings=settings,
            checkpoint_root=Path(read_setting(values, "PIPELINE_STREAM_CHECKPOINT_ROOT",
                                              str(settings.state_dir / "checkpoints"))),
            # Query names become folder names: the release-version rules keep them path-safe.
            query_name=validate_version(read_setting(values, "PIPELINE_STREAM_QUERY_NAME", "eventos_to_warehouse")),
            trigger_seconds=read_setting(values, "PIPELINE_STREAM_TRIGGER_SECONDS", 10, minimum=1),
            pg_schema=read_setting(values, "PIPELINE_STREAM_PG_SCHEMA", "") or None,
            es_index_prefix=read_setting(values, "PIPELINE_STREAM_ES_INDEX_PREFIX", ""),
            max_version_skew_seconds=read_setting(values, "PIPELINE_STREAM_MAX_VERSION_SKEW_SECONDS",
                                                  DEFAULT_MAX_VERSION_SKEW_SECONDS),
            source_schema=read_setting(values, "PIPELINE_DQ_SOURCE_SCHEMA", "") or None,
            stop_grace_seconds=read_setting(values, "PIPELINE_STREAM_STOP_GRACE_SECONDS", 30.0),
            max_failures=read_setting(values, "PIPELINE_SUPERVISOR_MAX_FAILURES", 3, minimum=1),
            failure_window=dt.timedelta(minutes=read_setting(
                values, "PIPELINE_SUPERVISOR_FAILURE_WINDOW_MINUTES", 30.0, minimum=1)),
            backoff_seconds=read_setting(values, "PIPELINE_SUPERVISOR_BACKOFF_SECONDS", 5.0),
            backoff_max_seconds=read_setting(values, "PIPELINE_SUPERVISOR_BACKOFF_MAX_SECONDS", 120.0),
            health=HealthPolicy(
                stall_after=dt.timedelta(seconds=read_setting(values, "PIPELINE_WATCHDOG_STALL_SECONDS", 600.0,
                                                              minimum=1)),
                startup_grace=dt.timedelta(seconds=read_setting(
                    values, "PIPELINE_WATCHDOG_STARTUP_GRACE_SECONDS", 180.0)),
                max_lag=read_setting(values, "PIPELINE_WATCHDOG_MAX_LAG", 10_000),
            ),
            recovery_timeout=dt.timedelta(seconds=read_setting(values, "PIPELINE_WATCHDOG_RECOVERY_SECONDS", 180.0)),
            retention=dt.timedelta(days=read_setting(values, "PIPELINE_CHECKPOINT_RETENTION_DAYS", 7.0)),
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


def spark_conf(config: StreamOpsConfig) -> dict[str, str]:
    """Spark properties every supervised driver gets (the job adds its own, e.g. minBatchesToRetain)."""
    return {
        # The driver's output is the task log and the driver log file: INFO would log every micro-batch forever.
        "spark.log.level": "WARN",
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.local.dir": str(config.settings.state_dir / "spark" / "local"),
    }


def driver_environment(config: StreamOpsConfig) -> dict[str, str]:
    """The driver's environment: the same settings Airflow resolved (the job reads them, not `.env`, since its
    code runs from the release zip), the venv's Python, and no inherited PYTHONPATH, so every module the job
    imports comes from its release and not from the working tree."""
    return {**setting_values(), "PIPELINE_STATE_DIR": str(config.settings.state_dir),
            "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": ""}


def job_arguments(config: StreamOpsConfig, available_now: bool) -> list[str]:
    """spark/streaming_job.py's command line for the supervised query."""
    arguments = ["--checkpoint-root", str(config.checkpoint_root), "--query-name", config.query_name,
                 "--topic", config.settings.kafka_topic,
                 "--trigger", "available-now" if available_now else f"processing-time={config.trigger_seconds} seconds"]
    if config.pg_schema:
        arguments += ["--pg-schema", config.pg_schema]
    if config.es_index_prefix:
        arguments += ["--es-index-prefix", config.es_index_prefix]
    # Only when it differs from the job's default: a rollback to a release older than the option still starts.
    if config.max_version_skew_seconds != DEFAULT_MAX_VERSION_SKEW_SECONDS:
        arguments += ["--max-version-skew-seconds", str(config.max_version_skew_seconds)]
    return arguments
