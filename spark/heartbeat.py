"""A StreamingQueryListener that writes one stream_heartbeats row per micro-batch, for the watchdog.

Spark calls listeners on its listener bus thread and logs (does not propagate) a listener's exception; a heartbeat
that cannot be written therefore shows up to the watchdog as missing heartbeats, which is what it checks.
"""

from __future__ import annotations

import json
import logging
from typing import Callable

import psycopg
from psycopg.types.json import Jsonb
from pyspark.sql.streaming import StreamingQueryListener

from include.schema import render_sql

log = logging.getLogger(__name__)


def heartbeat_row(progress) -> dict:
    """The stream_heartbeats row of a StreamingQueryProgress.

    latest_offsets holds the offsets each source has been read up to after this batch: {topic: {partition: offset}}
    for Kafka, merged over the query's sources."""
    offsets: dict = {}
    for source in progress.sources:
        if source.endOffset:
            offsets.update(json.loads(source.endOffset))
    return {
        "query_name": progress.name,
        "run_id": str(progress.runId),
        "batch_id": progress.batchId,
        "input_rows": progress.numInputRows,
        "rows_per_second": progress.processedRowsPerSecond,
        "latest_offsets": Jsonb(offsets),
    }


class HeartbeatListener(StreamingQueryListener):
    def __init__(self, connect: Callable[[], psycopg.Connection]):
        self._connect = connect
        self._statement = render_sql("stream_heartbeat.sql")

    def onQueryStarted(self, event) -> None:
        log.info("query %s started: id %s, run %s", event.name, event.id, event.runId)

    def onQueryProgress(self, event) -> None:
        row = heartbeat_row(event.progress)
        with self._connect() as connection:
            connection.execute(self._statement, row)
        log.info("heartbeat: query %s batch %s, %s rows, %.1f rows/s", row["query_name"], row["batch_id"],
                 row["input_rows"], row["rows_per_second"])

    def onQueryTerminated(self, event) -> None:
        if event.exception:
            log.error("query run %s failed: %s", event.runId, event.exception)
        else:
            log.info("query run %s finished", event.runId)
