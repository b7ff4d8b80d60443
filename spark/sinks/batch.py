"""The foreachBatch function: merge a validated micro-batch into Postgres, then bulk it into Elasticsearch.

The stream reaches it already validated (transforms.with_validation is applied to the streaming DataFrame, so its
large expression is analysed once per query, not once per batch). Nothing here catches a sink's exception: a
failure propagates out of foreachBatch, the query stops with it, the checkpoint keeps the batch uncommitted and
the next start replays it. Both sinks are idempotent under replay (version-guarded upsert, external versions,
dead letters unique per offset), so a replay converges.
"""

from __future__ import annotations

import logging
import time

from pyspark import StorageLevel
from pyspark.sql import DataFrame

from include.entities import ENTITIES, Entity
from spark.sinks.elastic import ElasticsearchSink
from spark.sinks.postgres import PostgresSink
from spark.transforms import OUTCOME, REJECTED, filter_entity, to_dead_letters, with_newest_per_id

log = logging.getLogger(__name__)


def split_batch(checked: DataFrame, batch_id: int) -> tuple[dict[str, int], dict[Entity, DataFrame], DataFrame | None]:
    """Count a validated batch's outcomes (one Spark job), then derive the newest-per-id rows of each entity that
    has any and the dead-letter rows (None when nothing was rejected)."""
    outcomes = {row[OUTCOME]: row["count"] for row in checked.groupBy(OUTCOME).count().collect()}
    frames = {
        entity: checked.transform(filter_entity(entity)).transform(with_newest_per_id(entity))
        for entity in ENTITIES if outcomes.get(entity.name)
    }
    dead_letters = checked.transform(to_dead_letters(batch_id)) if outcomes.get(REJECTED) else None
    return outcomes, frames, dead_letters


class MicroBatchSink:
    def __init__(self, postgres: PostgresSink, elastic: ElasticsearchSink):
        self.postgres = postgres
        self.elastic = elastic

    def __call__(self, checked: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        persisted = [checked.persist(StorageLevel.MEMORY_AND_DISK)]
        try:
            outcomes, frames, dead_letters = split_batch(checked, batch_id)
            # Each frame is read twice (staging, then bulk): keep the deduplicated rows rather than recompute them.
            persisted += [frame.persist(StorageLevel.MEMORY_AND_DISK) for frame in frames.values()]
            validated = time.monotonic()
            merged = self.postgres.write(frames, dead_letters)
            merged_at = time.monotonic()
            documents = self.elastic.write(frames, merged.suppressed)
            log.info(
                "batch %s: messages %s; postgres upserted %s, deleted %s, suppressed by deletion %s, "
                "dead letters %s; elasticsearch %s; seconds: validate %.2f, stage %.2f, merge %.2f, bulk %.2f",
                batch_id, outcomes, merged.upserted, merged.deleted,
                {name: len(ids) for name, ids in merged.suppressed.items()}, merged.dead_letters, documents,
                validated - started, merged.stage_seconds, merged.merge_seconds, time.monotonic() - merged_at,
            )
        finally:
            # Releasing the cache is all this does; an exception keeps propagating.
            for frame in persisted:
                frame.unpersist()
