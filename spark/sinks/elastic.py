"""Elasticsearch sink: versioned bulk writes from the executors with the Python client's bulk helper.

ES-Hadoop publishes no Spark 4 connector, so each partition of a batch streams its documents through
`helpers.streaming_bulk`. A document's `_id` is the entity id and its version the epoch-microseconds of the
entity's version column, with `version_type=external_gte`: an older version cannot overwrite a newer document and
a replay (same version) rewrites it unchanged. Tombstones are deletes with the same external version.

The documents are those spark/transforms.py rendered (the same JSON the Postgres sink stages). A bulk response of
200 can hide failed items, so every item is inspected: a version conflict (stale data) and deleting an absent
document are the intended outcomes; 429 and 5xx are retried with exponential backoff; anything else, or retries
running out, raises and fails the batch.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from include.entities import ENTITIES, Entity
from include.schema import ensure_index
from spark.transforms import DELETED, DOCUMENT, DOCUMENT_ID, DOCUMENT_VERSION, KIND

RETRY_STATUS = (429, 500, 502, 503, 504)
VERSION_TYPE = "external_gte"
INDEX = "index"


class BulkItemError(RuntimeError):
    """A bulk item failed in a way that retrying or ignoring would hide."""


def index_name(entity: Entity, prefix: str = "") -> str:
    return f"{prefix}_{entity.index}" if prefix else entity.index


def action(row) -> dict:
    """The bulk action of one document row; `_source` stays the JSON text Spark rendered."""
    operation = {"_op_type": "delete" if row[DELETED] else "index", "_index": row[INDEX], "_id": row[DOCUMENT_ID],
                 "version": row[DOCUMENT_VERSION], "version_type": VERSION_TYPE}
    if not row[DELETED]:
        operation["_source"] = row[DOCUMENT]
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
    max_connections: int = 4  # partitions, hence concurrent bulk clients, per batch

    def index_name(self, entity: Entity) -> str:
        return index_name(entity, self.index_prefix)

    def ensure_indices(self, entities: Iterable[Entity]) -> list[str]:
        """Create missing indices with the registry's mappings (never left to dynamic auto-creation)."""
        from elasticsearch import Elasticsearch

        with Elasticsearch(self.es_url, request_timeout=self.request_timeout) as client:
            return [ensure_index(client, entity, self.index_name(entity)) for entity in entities]

    def write(self, documents: DataFrame, suppressed: dict[str, list[str]]) -> dict[str, int]:
        """Bulk-write a batch's entity documents (transforms.DOCUMENT_COLUMNS; other kinds are skipped) minus the
        updates Postgres suppressed; returns the outcome counts."""
        indices = F.create_map(*[F.lit(v) for e in ENTITIES for v in (e.name, self.index_name(e))])
        entity_documents = documents.where(F.col(KIND).isin(*[e.name for e in ENTITIES]))
        skipped = [(kind, record_id) for kind, ids in suppressed.items() for record_id in ids]
        if skipped:
            skip = documents.sparkSession.createDataFrame(skipped, f"{KIND} string, {DOCUMENT_ID} string")
            entity_documents = entity_documents.join(F.broadcast(skip), [KIND, DOCUMENT_ID], "left_anti")
        rows = entity_documents.select(indices[F.col(KIND)].alias(INDEX), DOCUMENT_ID, DOCUMENT_VERSION, DELETED,
                                       DOCUMENT).coalesce(self.max_connections)
        write = functools.partial(
            write_partition, es_url=self.es_url, chunk_size=self.chunk_size, max_retries=self.max_retries,
            initial_backoff=self.initial_backoff, max_backoff=self.max_backoff, request_timeout=self.request_timeout,
        )
        totals: Counter = Counter()
        for counts in rows.rdd.mapPartitions(write).collect():
            totals.update(counts)
        return dict(totals)
