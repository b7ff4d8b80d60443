"""Settings of the extraction, read like every other setting (environment, then `.env`, then defaults).

| name                                       | default          | meaning                                   |
|--------------------------------------------|------------------|-------------------------------------------|
| PIPELINE_EXTRACT_SOURCE                    | postgres         | `postgres` (direct) or `rest` (Supabase)  |
| PIPELINE_EXTRACT_PAGE_SIZE                 | 5000; rest: 1000 | rows per page (at most 1000 for `rest`)   |
| PIPELINE_EXTRACT_LOOKBACK_SECONDS          | 300              | window re-read before the cursor          |
| PIPELINE_EXTRACT_SAFETY_MARGIN_SECONDS     | 2                | read versions up to source now minus this |
| PIPELINE_EXTRACT_ALLOWED_SKEW_SECONDS      | 60               | newer than source now + this: dead letter |
| PIPELINE_EXTRACT_REST_CLOCK_MARGIN_SECONDS | 30               | `rest`: "now" = client clock minus this   |
| PIPELINE_EXTRACT_MAX_PAYLOAD_BYTES         | 262144           | larger messages are dead letters          |
| PIPELINE_EXTRACT_SCHEDULE                  | */10 * * * *     | the DAG's schedule (process environment)  |
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Mapping

from include.contract import MAX_PAYLOAD_BYTES
from include.extract.extractor import (DEFAULT_ALLOWED_SKEW, DEFAULT_LOOKBACK, DEFAULT_PAGE_SIZE,
                                       DEFAULT_SAFETY_MARGIN, RunOptions)
from include.extract.sources import DEFAULT_REST_CLOCK_MARGIN
from include.settings import _SPEC, SettingsError, raw_values

PREFIX = "PIPELINE_EXTRACT_"
SOURCES = ("postgres", "rest")
# Rows per page by source. PostgREST cuts a larger page to its db-max-rows; the direct connection has no cap, and
# a larger page spreads each page's fixed costs (the source's statements, the producer's batches, the cursor's
# commit) over more rows; 5000 keeps the pages held at once (those in flight and the one being read) near 20 MB.
DEFAULT_PAGE_SIZES = {"postgres": 5000, "rest": DEFAULT_PAGE_SIZE}
DEFAULT_SCHEDULE = "*/10 * * * *"
SCHEDULE_SETTING = "PIPELINE_EXTRACT_SCHEDULE"


@dataclass(frozen=True)
class ExtractConfig:
    source: str = "postgres"
    # None: the source's default (DEFAULT_PAGE_SIZES).
    page_size: int | None = None
    lookback: dt.timedelta = DEFAULT_LOOKBACK
    safety_margin: dt.timedelta = DEFAULT_SAFETY_MARGIN
    allowed_skew: dt.timedelta = DEFAULT_ALLOWED_SKEW
    rest_clock_margin: dt.timedelta = DEFAULT_REST_CLOCK_MARGIN
    max_payload_bytes: int = MAX_PAYLOAD_BYTES

    def __post_init__(self):
        if self.source not in SOURCES:
            raise SettingsError(f"PIPELINE_EXTRACT_SOURCE={self.source!r} is not one of {SOURCES}")
        if self.page_size is None:
            object.__setattr__(self, "page_size", DEFAULT_PAGE_SIZES[self.source])
        if self.page_size < 1:
            raise SettingsError(f"PIPELINE_EXTRACT_PAGE_SIZE={self.page_size} must be positive")
        for name, value in (("PIPELINE_EXTRACT_LOOKBACK_SECONDS", self.lookback),
                            ("PIPELINE_EXTRACT_SAFETY_MARGIN_SECONDS", self.safety_margin),
                            ("PIPELINE_EXTRACT_ALLOWED_SKEW_SECONDS", self.allowed_skew),
                            ("PIPELINE_EXTRACT_REST_CLOCK_MARGIN_SECONDS", self.rest_clock_margin)):
            if value < dt.timedelta(0):
                raise SettingsError(f"{name}={value.total_seconds():g} must not be negative")
        if self.max_payload_bytes < 1:
            raise SettingsError(f"PIPELINE_EXTRACT_MAX_PAYLOAD_BYTES={self.max_payload_bytes} must be positive")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> ExtractConfig:
        environ = os.environ if environ is None else environ
        # raw_values layers the settings files under the environment for the foundation's names only.
        values = raw_values(dict(environ)) | {k: v for k, v in environ.items() if k.startswith(PREFIX)}
        defaults = cls()

        def seconds(name: str, default: dt.timedelta) -> dt.timedelta:
            return dt.timedelta(seconds=_integer(values, name, int(default.total_seconds())))

        return cls(
            source=values.get("PIPELINE_EXTRACT_SOURCE") or defaults.source,
            page_size=_integer(values, "PIPELINE_EXTRACT_PAGE_SIZE", None),
            lookback=seconds("PIPELINE_EXTRACT_LOOKBACK_SECONDS", defaults.lookback),
            safety_margin=seconds("PIPELINE_EXTRACT_SAFETY_MARGIN_SECONDS", defaults.safety_margin),
            allowed_skew=seconds("PIPELINE_EXTRACT_ALLOWED_SKEW_SECONDS", defaults.allowed_skew),
            rest_clock_margin=seconds("PIPELINE_EXTRACT_REST_CLOCK_MARGIN_SECONDS", defaults.rest_clock_margin),
            max_payload_bytes=_integer(values, "PIPELINE_EXTRACT_MAX_PAYLOAD_BYTES", defaults.max_payload_bytes),
        )

    def run_options(self, from_timestamp: dt.datetime | None = None, lookback: dt.timedelta | None = None,
                    max_rows: int | None = None) -> RunOptions:
        return RunOptions(page_size=self.page_size, lookback=self.lookback if lookback is None else lookback,
                          from_timestamp=from_timestamp, max_rows=max_rows, safety_margin=self.safety_margin,
                          allowed_skew=self.allowed_skew, max_payload_bytes=self.max_payload_bytes)


def parse_from_timestamp(value: str | None) -> dt.datetime | None:
    """The backfill param: an ISO-8601 time with a UTC offset, or empty for an incremental run."""
    if not value:
        return None
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"from_timestamp {value!r} needs a UTC offset, e.g. 2025-01-31T00:00:00+00:00")
    return moment


def _integer(values: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = values.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid int") from None


def schedule_from_environ(environ: Mapping[str, str] = os.environ) -> str:
    """The DAG's schedule. Read at parse time, so from the process environment only."""
    return environ.get(SCHEDULE_SETTING) or DEFAULT_SCHEDULE


def topic_asset_uri(environ: Mapping[str, str] | None = None) -> str:
    """`kafka://host:port/topic` for the Airflow Asset of the events topic, the apache-kafka provider's form.

    DAG files call this at parse time: it reads the environment and the settings files, never a connection;
    unset names take the settings' defaults (the strict `load_settings` would fail a DAG import on a machine
    whose stack secrets are not generated yet)."""
    values = raw_values(None if environ is None else dict(environ))

    def value(name: str) -> str:
        return values.get(name) or _SPEC[name][0]

    return f"kafka://{value('PIPELINE_KAFKA_HOST')}:{value('PIPELINE_KAFKA_PORT')}/{value('PIPELINE_KAFKA_TOPIC')}"
