"""Every setting of the pipeline, declared once and read in one place: `load_settings()`.

Each field of `Settings` is the setting `PIPELINE_<FIELD>`; its type and bounds are checked by pydantic when the
settings load. Precedence: the process environment, then the repo's `.env`, then `<state>/generated.env`
(secrets the local stack generates on first start), then the defaults below. `.env.example` documents each name
(a test keeps the two equal). A bad value raises `SettingsError` naming the setting, so a misconfiguration stops at
start-up rather than mid-run.

Subsystems read their settings from here and keep only their own derived views (`ExtractConfig`,
`StreamOpsConfig`, `QualityThresholds`); none parses a value itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal, Mapping
from urllib.parse import quote

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from include.contract import DEFAULT_MAX_BYTES_PER_TRIGGER, DEFAULT_MAX_VERSION_SKEW_SECONDS, MAX_PAYLOAD_BYTES

REPO_ROOT = Path(__file__).resolve().parent.parent
GENERATED_ENV_NAME = "generated.env"
PREFIX = "PIPELINE_"

Port = Annotated[int, Field(ge=1, le=65535)]
Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0)]


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True, env_ignore_empty=True,
                                      case_sensitive=False)

    # --- the local stack and its services
    state_dir: Path = REPO_ROOT / ".state"
    pg_host: str = "127.0.0.1"
    pg_port: Port = 54329
    pg_user: str = "pipeline"
    # Required (checked by load_settings): `make up` generates one locally; production sets it.
    pg_password: str = ""
    pg_warehouse_db: str = "warehouse"
    pg_source_db: str = "supabase"
    pg_airflow_db: str = "airflow"
    pg_statement_timeout_ms: Positive = 60_000
    kafka_host: str = "127.0.0.1"
    kafka_port: Port = 19092
    kafka_controller_port: Port = 19093
    kafka_topic: str = "eventos"
    kafka_partitions: Positive = 3
    kafka_heap_mb: Positive = 512
    es_host: str = "127.0.0.1"
    es_port: Port = 19200
    es_transport_port: Port = 19300
    es_heap_mb: Positive = 768
    spark_master: str = "local[2]"
    spark_driver_memory: str = "2g"
    # The local standalone cluster (`python -m stack up --spark-cluster`, or spark_master set to its URL).
    spark_master_port: Port = 17077
    spark_master_ui_port: Port = 17080
    spark_worker_ui_port: Port = 17081  # worker i (from 0) serves its UI on this port + i
    spark_workers: Positive = 2
    spark_worker_memory: Annotated[str, Field(pattern=r"^\d+[kmgt]$")] = "1g"
    airflow_api_port: Port = 18080
    # Unset: <state_dir>/airflow. Tests point it (and pg_airflow_db) at their own, never at the user's Airflow.
    airflow_home: Path | None = None
    supabase_url: str = ""
    supabase_key: str = ""

    # --- extraction (include/extract/config.py)
    extract_source: Literal["postgres", "rest", "cdc"] = "cdc"
    # Unset: the source's default page size.
    extract_page_size: Positive | None = None
    extract_lookback_seconds: NonNegative = 300
    extract_safety_margin_seconds: NonNegative = 2
    extract_allowed_skew_seconds: NonNegative = 60
    extract_rest_clock_margin_seconds: NonNegative = 30
    extract_max_payload_bytes: Positive = MAX_PAYLOAD_BYTES
    extract_schedule: str = "*/10 * * * *"
    # cdc mode (include/extract/cdc.py): the logical replication slot and publication it owns on the source, and
    # when a slot counts as neglected: the WAL it holds back on the source, and the age of its last confirmation.
    extract_cdc_slot: str = "pipeline_cdc"
    extract_cdc_publication: str = "pipeline_cdc"
    extract_cdc_max_retained_wal_bytes: Positive = 1024 * 1024 * 1024
    extract_cdc_max_confirm_age_seconds: Positive = 3600

    # --- the streaming job's operation (include/orchestration/config.py)
    # Unset: <state_dir>/checkpoints.
    stream_checkpoint_root: Path | None = None
    stream_query_name: str = "eventos_to_warehouse"
    stream_trigger_seconds: Positive = 10
    stream_pg_schema: str = ""
    stream_es_index_prefix: str = ""
    stream_max_version_skew_seconds: NonNegative = DEFAULT_MAX_VERSION_SKEW_SECONDS
    stream_max_bytes_per_trigger: Positive = DEFAULT_MAX_BYTES_PER_TRIGGER
    stream_stop_grace_seconds: Seconds = 30.0
    supervisor_max_failures: Positive = 3
    supervisor_failure_window_minutes: Annotated[float, Field(ge=1)] = 30.0
    supervisor_backoff_seconds: Seconds = 5.0
    supervisor_backoff_max_seconds: Seconds = 120.0
    watchdog_interval_minutes: Positive = 5
    watchdog_stall_seconds: Annotated[float, Field(ge=1)] = 600.0
    watchdog_startup_grace_seconds: Seconds = 180.0
    watchdog_max_lag: NonNegative = 10_000
    watchdog_recovery_seconds: Seconds = 180.0
    checkpoint_retention_days: Seconds = 7.0
    deploy_gate_timeout_seconds: Positive = 300

    # --- the data-quality gate (include/orchestration/quality.py)
    dq_source_schema: str = ""
    dq_max_sink_gap_pct: Seconds = 0.1
    dq_max_source_gap_pct: Seconds = 1.0
    dq_max_dead_letters: NonNegative = 100
    dq_window_minutes: NonNegative = 60
    dq_max_heartbeat_age_seconds: Seconds = 300.0
    dq_max_kafka_lag: NonNegative = 10_000
    # Ids on which a store may differ from its reference, per entity and store (include/reconcile).
    dq_max_drift: NonNegative = 0

    def as_environment(self) -> dict[str, str]:
        """Every setting as its `PIPELINE_*` variable, for a process that must see exactly these values (a driver
        running from its release zip, where no `.env` is at hand)."""
        return {setting_name(field): str(value) for field, value in self if value is not None}

    @property
    def resolved_airflow_home(self) -> Path:
        return self.airflow_home or self.state_dir / "airflow"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.kafka_host}:{self.kafka_port}"

    @property
    def spark_cluster_url(self) -> str:
        """The master URL of the local standalone cluster."""
        return f"spark://127.0.0.1:{self.spark_master_port}"

    @property
    def es_url(self) -> str:
        return f"http://{self.es_host}:{self.es_port}"

    def pg_dsn(self, database: str) -> str:
        """A libpq URI with the statement timeout every session must carry."""
        return (
            f"postgresql://{quote(self.pg_user)}:{quote(self.pg_password, safe='')}@{self.pg_host}:{self.pg_port}"
            f"/{database}?options={quote(self._pg_options(), safe='')}"
        )

    def _pg_options(self) -> str:
        return f"-c statement_timeout={self.pg_statement_timeout_ms}"

    def _pg_connection(self, database: str, description: str) -> str:
        return json.dumps(
            {
                "conn_type": "postgres",
                "description": description,
                "host": self.pg_host,
                "port": self.pg_port,
                "login": self.pg_user,
                "password": self.pg_password,
                "schema": database,
                "extra": {"options": self._pg_options()},
            }
        )

    def airflow_connections(self) -> dict[str, str]:
        """`AIRFLOW_CONN_*` variables for every connection the DAGs name, as JSON."""
        from include import connections as ids

        connections = {
            ids.WAREHOUSE_CONN_ID: self._pg_connection(
                self.pg_warehouse_db, "BI warehouse: leads, chat_sessions, eventos_raw"
            ),
            ids.SUPABASE_DB_CONN_ID: self._pg_connection(
                self.pg_source_db, "Supabase database (local stand-in by default)"
            ),
            ids.SPARK_CONN_ID: json.dumps(
                {"conn_type": "spark", "host": self.spark_master, "extra": {"deploy-mode": "client"}}
            ),
            ids.ELASTICSEARCH_CONN_ID: json.dumps(
                {"conn_type": "elasticsearch", "host": self.es_host, "port": self.es_port, "schema": "http"}
            ),
            ids.KAFKA_CONN_ID: json.dumps(
                {"conn_type": "kafka", "extra": {"bootstrap.servers": self.kafka_bootstrap}}
            ),
        }
        if self.supabase_url:
            connections[ids.SUPABASE_API_CONN_ID] = json.dumps(
                {"conn_type": "http", "host": self.supabase_url, "password": self.supabase_key}
            )
        return {f"AIRFLOW_CONN_{conn_id.upper()}": value for conn_id, value in connections.items()}

    def airflow_environment(self) -> dict[str, str]:
        """Environment for any `airflow` command run against the local stack."""
        home = self.resolved_airflow_home
        return {
            **airflow_code_environment(),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # The pipeline runs by itself once Airflow runs (README, "Airflow"); a DAG someone paused stays paused.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
                f"postgresql+psycopg2://{quote(self.pg_user)}:{quote(self.pg_password, safe='')}"
                f"@{self.pg_host}:{self.pg_port}/{self.pg_airflow_db}"
            ),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__API__PORT": str(self.airflow_api_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.airflow_api_port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "simple_auth_passwords.json"),
            **self.airflow_connections(),
        }


def airflow_code_environment() -> dict[str, str]:
    """Where Airflow finds this repo's DAGs, plugins and packages: all that parsing a DAG needs, no secret."""
    return {
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # The repo root on the path lets DAGs import include/ and spark/ in every Airflow process.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])),
    }


def setting_name(field: str) -> str:
    return PREFIX + field.upper()


def setting_names() -> set[str]:
    """Every setting the pipeline reads."""
    return {setting_name(field) for field in Settings.model_fields}


class _ExplicitEnvironment(Settings):
    """Settings read from a given mapping instead of the process environment (tests, and a driver's environment
    being prepared), still over the settings files: pydantic-settings' own environment source reads os.environ."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, dotenv_settings


def _env_files(environ: Mapping[str, str]) -> tuple[Path, Path]:
    """generated.env under the state folder (itself a setting, from the environment or `.env`), then `.env`;
    pydantic-settings lets the later file win."""
    from dotenv import dotenv_values

    repo_env = REPO_ROOT / ".env"
    state_dir = (environ.get(PREFIX + "STATE_DIR")
                 or (dotenv_values(repo_env).get(PREFIX + "STATE_DIR") if repo_env.is_file() else None)
                 or Settings.model_fields["state_dir"].default)
    return Path(state_dir) / GENERATED_ENV_NAME, repo_env


def load_settings(environ: Mapping[str, str] | None = None, *, require_secrets: bool = True) -> Settings:
    """Every setting, checked; `environ` replaces the process environment. `require_secrets=False` leaves unset
    secrets empty, for what connects to nothing (DAG parsing, unit tests on a machine whose stack never ran)."""
    env_files = _env_files(os.environ if environ is None else environ)
    try:
        if environ is None:
            settings = Settings(_env_file=env_files)
        else:
            given = {name.removeprefix(PREFIX).lower(): value for name, value in environ.items()
                     if name.startswith(PREFIX) and value != ""}
            settings = _ExplicitEnvironment(_env_file=env_files, **given)
    except ValidationError as error:
        problems = [f"{setting_name(str(e['loc'][0]))}={e['input']!r}: {e['msg']}" for e in error.errors()]
        raise SettingsError("; ".join(problems)) from None
    if require_secrets and not settings.pg_password:
        raise SettingsError(f"{PREFIX}PG_PASSWORD is not set: put it in .env (see .env.example) or run `make up` "
                            "to generate it")
    return settings
