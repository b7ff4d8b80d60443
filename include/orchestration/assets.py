"""Airflow Assets of the streaming job: what it reads, what it writes, and the release pointer.

Built at DAG parse time from settings files and the environment only (no connection, no network); unset names
take the settings' defaults, so parsing works before the local stack generated its secrets.
"""

from __future__ import annotations

from airflow.sdk import Asset

from include.entities import ENTITIES
from include.extract.config import topic_asset_uri
from include.settings import _SPEC, raw_values

# The version the supervisor submits; updated by deploys.
STREAM_RELEASE = Asset(name="stream_release", uri="pipeline://stream/release")


def _setting(values: dict[str, str], name: str) -> str:
    return values.get(name) or _SPEC[name][0]


def kafka_topic() -> Asset:
    """The events topic; for topic `eventos` the same asset as the extraction DAG's outlet. Named after the topic,
    so a run configured for another topic (tests) declares another asset instead of contradicting this one."""
    return Asset(name=f"kafka_{_setting(raw_values(), 'PIPELINE_KAFKA_TOPIC')}", uri=topic_asset_uri())


def sink_assets() -> list[Asset]:
    """The warehouse tables (postgres://host:port/database/schema/table) and the search indices."""
    values = raw_values()
    pg = f"{_setting(values, 'PIPELINE_PG_HOST')}:{_setting(values, 'PIPELINE_PG_PORT')}"
    database = _setting(values, "PIPELINE_PG_WAREHOUSE_DB")
    es = f"{_setting(values, 'PIPELINE_ES_HOST')}:{_setting(values, 'PIPELINE_ES_PORT')}"
    return ([Asset(name=f"warehouse_{e.table}", uri=f"postgres://{pg}/{database}/public/{e.table}") for e in ENTITIES]
            + [Asset(name=f"search_{e.index}", uri=f"elasticsearch://{es}/{e.index}") for e in ENTITIES])
