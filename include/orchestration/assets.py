"""Airflow Assets of the streaming job: what it reads, what it writes, and the release pointer.

Built at DAG parse time from the settings only (no connection, no network, no secret), so parsing works before
the local stack generated its secrets.
"""

from __future__ import annotations

from airflow.sdk import Asset

from include.entities import ENTITIES
from include.extract.config import topic_asset_uri
from include.settings import load_settings

# The version the supervisor submits; updated by deploys.
STREAM_RELEASE = Asset(name="stream_release", uri="pipeline://stream/release")


def kafka_topic() -> Asset:
    """The events topic; for topic `eventos` the same asset as the extraction DAG's outlet. Named after the topic,
    so a run configured for another topic (tests) declares another asset instead of contradicting this one."""
    return Asset(name=f"kafka_{load_settings(require_secrets=False).kafka_topic}", uri=topic_asset_uri())


def sink_assets() -> list[Asset]:
    """The warehouse tables and the search indices, under URIs that no setting changes: Airflow deactivates an
    asset whose name comes back with another URI, so a run pointed at other databases or ports (tests, a moved
    server) must not rename the location behind the same name."""
    return ([Asset(name=f"warehouse_{e.table}", uri=f"pipeline://warehouse/{e.table}") for e in ENTITIES]
            + [Asset(name=f"search_{e.index}", uri=f"pipeline://search/{e.index}") for e in ENTITIES])
