"""The foreachBatch function: merge a micro-batch into Postgres and bulk its newest rows into Elasticsearch.

The stream reaches it as Kafka rows. Per batch: one Spark job, in which every task validates and renders its rows
(transforms.documents_of, the function of the to_documents transform) and COPYs them into Postgres staging; then
one Postgres transaction (the merge). Inside it, once Postgres has taken the batch (rows it refuses for their data
isolated by bisection), the rows Elasticsearch must get are streamed to the bulk; documents Elasticsearch refuses
for their data are taken out of Postgres as well before the commit. Refused by one sink = refused by both: such a
row is a dead letter naming the sink, keeps its previous version in both, and the rest of the batch lands
(spark/sinks/postgres.py describes the savepoints). The bulk runs after the upsert rather than beside it, the
price of that agreement.

Nothing here catches a sink's failure (an outage: connection, timeout, 429/5xx after retries): it propagates out
of foreachBatch before the merge commits, the query stops with it, the checkpoint keeps the batch uncommitted and
the next start replays it. Both sinks are idempotent under replay (version-guarded upsert, external versions, dead
letters unique per offset), so a replay converges.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from pyspark.sql import DataFrame

from spark.sinks.elastic import ElasticsearchSink
from spark.sinks.postgres import IndexAction, MergeResult, PostgresSink, Refusal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchReport:
    merged: MergeResult
    indexed: dict[str, int]
    bulk_seconds: float  # from the bulk's start to its end, inside the merge
    seconds: float


class MicroBatchSink:
    def __init__(self, postgres: PostgresSink, elastic: ElasticsearchSink, documents: Callable,
                 topic_id: Callable[[], str] | None = None):
        self.postgres = postgres
        self.elastic = elastic
        self.documents = documents  # transforms.documents_of(max_payload_bytes)
        self.topic_id = topic_id  # topic.TopicIds of the topic the query reads

    def write(self, batch: DataFrame, batch_id: int) -> BatchReport:
        started = time.monotonic()
        bulk = {"indexed": {}, "seconds": 0.0}

        def index(actions: Iterator[IndexAction]) -> list[Refusal]:
            bulk_started = time.monotonic()
            bulk["indexed"], refused = self.elastic.write(actions)
            bulk["seconds"] = time.monotonic() - bulk_started
            return refused

        merged = self.postgres.write(batch, batch_id, self.documents, index=index, topic_id=self.topic_id)
        report = BatchReport(merged, bulk["indexed"], round(bulk["seconds"], 3), round(time.monotonic() - started, 3))
        log.info(
            "batch %s: staged %s; postgres upserted %s, deleted %s, dead letters %s, refused %s, lost offset ranges "
            "%s; elasticsearch %s; seconds: stage %.2f, merge %.2f (bulk %.2f of it), total %.2f",
            batch_id, merged.staged, merged.upserted, merged.deleted, merged.dead_letters, merged.refused,
            merged.lost_offset_ranges, report.indexed,
            merged.stage_seconds, merged.merge_seconds, report.bulk_seconds, report.seconds,
        )
        return report

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        self.write(batch, batch_id)
