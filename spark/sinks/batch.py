"""The foreachBatch function: merge a validated micro-batch into Postgres, then bulk it into Elasticsearch.

The stream reaches it already validated (transforms.with_validation is applied to the streaming DataFrame, so its
large expression is analysed once per query, not once per batch). Per batch it runs three Spark jobs: count the
outcomes, stage the documents in Postgres, bulk them into Elasticsearch; and one Postgres transaction (the merge).

Nothing here catches a sink's exception: a failure propagates out of foreachBatch, the query stops with it, the
checkpoint keeps the batch uncommitted and the next start replays it. Both sinks are idempotent under replay
(version-guarded upsert, external versions, dead letters unique per offset), so a replay converges.
"""

from __future__ import annotations

import functools
import logging
import time

from pyspark import StorageLevel
from pyspark.sql import DataFrame

from include.entities import ENTITIES
from spark.sinks.elastic import ElasticsearchSink
from spark.sinks.postgres import PostgresSink
from spark.transforms import (OUTCOME, REJECTED, dead_letter_documents, filter_entity, to_dead_letters, to_documents,
                              with_newest_per_id)

log = logging.getLogger(__name__)


def batch_documents(checked: DataFrame, batch_id: int) -> tuple[dict[str, int], DataFrame | None]:
    """Count a validated batch's outcomes (one Spark job), then derive its documents: the newest-per-id rows of each
    entity present and the dead letters (None when the batch is empty)."""
    outcomes = {row[OUTCOME]: row["count"] for row in checked.groupBy(OUTCOME).count().collect()}
    parts = [
        checked.transform(filter_entity(entity)).transform(with_newest_per_id(entity)).transform(to_documents(entity))
        for entity in ENTITIES if outcomes.get(entity.name)
    ]
    if outcomes.get(REJECTED):
        parts.append(checked.transform(to_dead_letters(batch_id)).transform(dead_letter_documents))
    return outcomes, functools.reduce(DataFrame.unionByName, parts) if parts else None


class MicroBatchSink:
    def __init__(self, postgres: PostgresSink, elastic: ElasticsearchSink):
        self.postgres = postgres
        self.elastic = elastic

    def __call__(self, checked: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        persisted = [checked.persist(StorageLevel.MEMORY_AND_DISK)]
        try:
            outcomes, documents = batch_documents(checked, batch_id)
            if documents is None:
                return
            # Read twice (staging, then bulk): keep the rendered documents rather than recompute them.
            persisted.append(documents.persist(StorageLevel.MEMORY_AND_DISK))
            counted = time.monotonic()
            merged = self.postgres.write(documents)
            merged_at = time.monotonic()
            indexed = self.elastic.write(documents, merged.suppressed)
            log.info(
                "batch %s: messages %s; postgres upserted %s, deleted %s, suppressed by deletion %s, "
                "dead letters %s; elasticsearch %s; seconds: count %.2f, stage %.2f, merge %.2f, bulk %.2f",
                batch_id, outcomes, merged.upserted, merged.deleted,
                {name: len(ids) for name, ids in merged.suppressed.items()}, merged.dead_letters, indexed,
                counted - started, merged.stage_seconds, merged.merge_seconds, time.monotonic() - merged_at,
            )
        finally:
            # Releasing the cache is all this does; an exception keeps propagating.
            for frame in persisted:
                frame.unpersist()
