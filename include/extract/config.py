"""The extraction's view of the `PIPELINE_EXTRACT_*` settings (declared in include/settings.py, documented in
.env.example): the source, its page size (by source unless set), the lookback window, the read bound's margins and
the payload limit."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Mapping

from include.contract import MAX_PAYLOAD_BYTES
from include.extract.extractor import (DEFAULT_ALLOWED_SKEW, DEFAULT_LOOKBACK, DEFAULT_PAGE_SIZE,
                                       DEFAULT_SAFETY_MARGIN, RunOptions)
from include.extract.sources import DEFAULT_REST_CLOCK_MARGIN
from include.settings import SettingsError, load_settings

SOURCES = ("postgres", "rest", "cdc")
# Rows per page by source. PostgREST cuts a larger page to its db-max-rows; the direct connection has no cap, and
# a larger page spreads each page's fixed costs (the source's statements, the producer's batches, the cursor's
# commit) over more rows; 5000 keeps the pages held at once (those in flight and the one being read) near 20 MB.
DEFAULT_PAGE_SIZES = {"postgres": 5000, "rest": DEFAULT_PAGE_SIZE, "cdc": 5000}


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
        settings = load_settings(environ, require_secrets=False)
        return cls(
            source=settings.extract_source,
            page_size=settings.extract_page_size,
            lookback=dt.timedelta(seconds=settings.extract_lookback_seconds),
            safety_margin=dt.timedelta(seconds=settings.extract_safety_margin_seconds),
            allowed_skew=dt.timedelta(seconds=settings.extract_allowed_skew_seconds),
            rest_clock_margin=dt.timedelta(seconds=settings.extract_rest_clock_margin_seconds),
            max_payload_bytes=settings.extract_max_payload_bytes,
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


def schedule_from_environ(environ: Mapping[str, str] | None = None) -> str:
    """The DAG's schedule, read when the DAG file is parsed (so no secret is needed)."""
    return load_settings(environ, require_secrets=False).extract_schedule


def source_from_environ(environ: Mapping[str, str] | None = None) -> str:
    """PIPELINE_EXTRACT_SOURCE, read when the DAG file is parsed: `cdc` reads one slot for every entity, in one
    task; the pollers run one mapped task per entity."""
    return load_settings(environ, require_secrets=False).extract_source


def topic_asset_uri(environ: Mapping[str, str] | None = None) -> str:
    """`kafka://host:port/topic` for the Airflow Asset of the events topic, the apache-kafka provider's form.
    DAG files call this at parse time: it reads the settings, never a connection."""
    settings = load_settings(environ, require_secrets=False)
    return f"kafka://{settings.kafka_bootstrap}/{settings.kafka_topic}"
