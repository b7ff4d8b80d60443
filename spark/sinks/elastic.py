"""Elasticsearch sink: versioned bulk writes from the executors with the Python client's bulk helper.

ES-Hadoop publishes no Spark 4 connector, so each partition of a batch streams its documents through
`helpers.streaming_bulk`. A document's `_id` is the entity id and its version the epoch-microseconds of the
entity's version column, with `version_type=external_gte`: an older version cannot overwrite a newer document and
a replay (same version) rewrites it unchanged. Tombstones are deletes with the same external version.

A bulk response of 200 can hide failed items, so every item is inspected: a version conflict (stale data) and
deleting an absent document are the intended outcomes; 429 and 5xx are retried with exponential backoff;
anything else, or retries running out, raises and fails the batch.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from include.entities import Entity
from include.schema import ensure_index

log = logging.getLogger(__name__)

RETRY_STATUS = (429, 500, 502, 503, 504)
VERSION_TYPE = "external_gte"
# ISO-8601 with microseconds and offset (Z for UTC, the session time zone).
TIMESTAMP_FORMAT = "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"
INDEX, ID, VERSION, DELETED, SOURCE = "es_index", "es_id", "es_version", "es_deleted", "es_source"


class BulkItemError(RuntimeError):
    """A bulk item failed in a way that retrying or ignoring would hide."""


def index_name(entity: Entity, prefix: str = "") -> str:
    return f"{prefix}_{entity.index}" if prefix else entity.index


def with_documents(entity: Entity, index: str) -> Callable[[DataFrame], DataFrame]:
    """Newest-per-id rows (entity columns + deleted) -> one bulk action per row: index, id, version, source."""

    def transform(df: DataFrame) -> DataFrame:
        source = F.struct(*[
            F.parse_json(c.name).alias(c.name) if c.type == "jsonb" else F.col(c.name) for c in entity.columns
        ])
        return df.select(
            F.lit(index).alias(INDEX),
            F.col(entity.key).alias(ID),
            F.unix_micros(entity.version_column).alias(VERSION),
            F.col("deleted").alias(DELETED),
            F.when(~F.col("deleted"), F.to_json(source, {
                "timestampFormat": TIMESTAMP_FORMAT,
                "ignoreNullFields": "false",  # a null field is written as null, as in Postgres
            })).alias(SOURCE),
        )

    return transform


def action(row) -> dict:
    """The bulk action of one document row; `_source` stays the JSON text Spark produced."""
    operation = {"_op_type": "delete" if row[DELETED] else "index", "_index": row[INDEX], "_id": row[ID],
                 "version": row[VERSION], "version_type": VERSION_TYPE}
    if not row[DELETED]:
        operation["_source"] = row[SOURCE]
    return operation


def outcome(ok: bool, item: dict) -> str:
    """What a bulk item result means; raises BulkItemError for a real failure."""
    operation, info = next(iter(item.items()))
    if ok:
        return "deleted" if operation == "delete" else "indexed"
    status = info.get("status")
    error = info.get("error")
    error_type = error.get("type") if isinstance(error, dict) else None
    if status == 409 and error_type == "version_conflict_engine_exception":
        return "stale"
    if operation == "delete" and status == 404:
        return "absent"
    raise BulkItemError(
        f"{operation} {info.get('_index')}/{info.get('_id')} failed with status {status}: {error}"
    )


def write_partition(rows: Iterable, *, es_url: str, chunk_size: int, max_retries: int, initial_backoff: float,
                    max_backoff: float, request_timeout: float) -> Iterator[dict[str, int]]:
    """Bulk-write one partition's document rows; yields its outcome counts (one dict)."""
    from elasticsearch import Elasticsearch
    from elasticsearch.helpers import streaming_bulk

    counts: Counter = Counter()
    client = Elasticsearch(es_url, request_timeout=request_timeout)
    try:
        for ok, item in streaming_bulk(
            client, map(action, rows), chunk_size=chunk_size, max_retries=max_retries,
            initial_backoff=initial_backoff, max_backoff=max_backoff, retry_on_status=RETRY_STATUS,
            raise_on_error=False,  # items come back to `outcome`, which decides
        ):
            counts[outcome(ok, item)] += 1
    finally:
        client.close()
    yield dict(counts)


@dataclass(frozen=True)
class ElasticsearchSink:
    es_url: str
    index_prefix: str = ""
    chunk_size: int = 1000
    max_retries: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    request_timeout: float = 60.0

    def index_name(self, entity: Entity) -> str:
        return index_name(entity, self.index_prefix)

    def ensure_indices(self, entities: Iterable[Entity]) -> list[str]:
        """Create missing indices with the registry's mappings (never left to dynamic auto-creation)."""
        from elasticsearch import Elasticsearch

        with Elasticsearch(self.es_url, request_timeout=self.request_timeout) as client:
            return [ensure_index(client, entity, self.index_name(entity)) for entity in entities]

    def write(self, frames: dict[Entity, DataFrame], suppressed: dict[str, list[str]]) -> dict[str, int]:
        """Write newest-per-id rows of each entity, minus the updates Postgres suppressed; returns outcome counts."""
        documents = None
        for entity, frame in frames.items():
            skipped = suppressed.get(entity.name)
            if skipped:
                ids = frame.sparkSession.createDataFrame([(i,) for i in skipped], f"{entity.key} string")
                frame = frame.join(F.broadcast(ids), entity.key, "left_anti")
            entity_documents = frame.transform(with_documents(entity, self.index_name(entity)))
            documents = entity_documents if documents is None else documents.unionByName(entity_documents)
        if documents is None:
            return {}
        write = functools.partial(
            write_partition, es_url=self.es_url, chunk_size=self.chunk_size, max_retries=self.max_retries,
            initial_backoff=self.initial_backoff, max_backoff=self.max_backoff, request_timeout=self.request_timeout,
        )
        totals: Counter = Counter()
        for counts in documents.rdd.mapPartitions(write).collect():
            totals.update(counts)
        return dict(totals)
