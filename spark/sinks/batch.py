"""The foreachBatch function: merge a micro-batch into Postgres and bulk its newest rows into Elasticsearch.

The stream reaches it as Kafka rows. Per batch: one Spark job, in which every task validates and renders its rows
(transforms.documents_of, the function of the to_documents transform) and COPYs them into Postgres staging; then
one Postgres transaction (the merge). The Elasticsearch bulk starts, in a thread of the driver, as soon as the merge
has recorded the batch's deletions and listed what Elasticsearch must get, and runs while the upsert does.

Nothing here catches a sink's exception: a failure propagates out of foreachBatch, the query stops with it, the
checkpoint keeps the batch uncommitted and the next start replays it. Both sinks are idempotent under replay
(version-guarded upsert, external versions, dead letters unique per offset), so a replay converges.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from pyspark.sql import DataFrame

from spark.sinks.elastic import ElasticsearchSink
from spark.sinks.postgres import MergeResult, PostgresSink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchReport:
    merged: MergeResult
    indexed: dict[str, int]
    bulk_seconds: float  # from the bulk's start to its end, concurrent with the end of the merge
    seconds: float


class MicroBatchSink:
    def __init__(self, postgres: PostgresSink, elastic: ElasticsearchSink, documents: Callable):
        self.postgres = postgres
        self.elastic = elastic
        self.documents = documents  # transforms.documents_of(max_payload_bytes)

    def _timed_write(self, actions) -> tuple[dict[str, int], float]:
        started = time.monotonic()
        return self.elastic.write(actions), time.monotonic() - started

    def write(self, batch: DataFrame, batch_id: int) -> BatchReport:
        started = time.monotonic()
        bulk: list[Future] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulk") as pool:
            merged = self.postgres.write(
                batch, batch_id, self.documents,
                on_index_actions=lambda actions: bulk.append(pool.submit(self._timed_write, actions)))
            # A failed merge has raised by now, after the pool waited for the bulk; a failed bulk raises here.
            indexed, bulk_seconds = bulk[0].result() if bulk else ({}, 0.0)
        report = BatchReport(merged, indexed, round(bulk_seconds, 3), round(time.monotonic() - started, 3))
        log.info(
            "batch %s: staged %s; postgres upserted %s, deleted %s, dead letters %s; elasticsearch %s; "
            "seconds: stage %.2f, merge %.2f, bulk %.2f, total %.2f",
            batch_id, merged.staged, merged.upserted, merged.deleted, merged.dead_letters, indexed,
            merged.stage_seconds, merged.merge_seconds, report.bulk_seconds, report.seconds,
        )
        return report

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        self.write(batch, batch_id)
