"""Elasticsearch sink: versioned bulk writes of a micro-batch's newest rows with the Python client's bulk helper.

ES-Hadoop publishes no Spark 4 connector. The rows come from the Postgres merge (postgres.IndexAction: the newest
row per id, minus the updates a recorded deletion suppresses), so the driver writes them, split over
`max_connections` threads that each stream their share through `helpers.streaming_bulk`. A document's `_id` is the
entity id and its version the epoch-microseconds of the entity's version column, with `version_type=external_gte`:
an older version cannot overwrite a newer document and a replay (same version) rewrites it unchanged. Tombstones
are deletes with the same external version.

`_source` is the JSON text spark/transforms.py rendered (the same document Postgres loaded). A bulk response of
200 can hide failed items, so every item is inspected: a version conflict (stale data) and deleting an absent
document are the intended outcomes; 429 and 5xx are retried with exponential backoff; anything else, or retries
running out, raises and fails the batch.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Sequence

from include.entities import BY_NAME, Entity
from include.schema import ensure_index

RETRY_STATUS = (429, 500, 502, 503, 504)
VERSION_TYPE = "external_gte"


class BulkItemError(RuntimeError):
    """A bulk item failed in a way that retrying or ignoring would hide."""


def index_name(entity: Entity, prefix: str = "") -> str:
    return f"{prefix}_{entity.index}" if prefix else entity.index


def action(index: str, document_id: str, version: int, deleted: bool, document: str | None) -> dict:
    """The bulk action of one document; `_source` stays the JSON text as rendered."""
    operation = {"_op_type": "delete" if deleted else "index", "_index": index, "_id": document_id,
                 "version": version, "version_type": VERSION_TYPE}
    if not deleted:
        operation["_source"] = document
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


def bulk_write(client, actions: Iterable[dict], *, chunk_size: int, max_retries: int, initial_backoff: float,
               max_backoff: float) -> dict[str, int]:
    """Bulk-write actions through one client; returns their outcome counts."""
    from elasticsearch.helpers import streaming_bulk

    counts: Counter = Counter()
    for ok, item in streaming_bulk(
        client, actions, chunk_size=chunk_size, max_retries=max_retries, initial_backoff=initial_backoff,
        max_backoff=max_backoff, retry_on_status=RETRY_STATUS,
        raise_on_error=False,  # items come back to `outcome`, which decides
    ):
        counts[outcome(ok, item)] += 1
    return dict(counts)


@dataclass(frozen=True)
class ElasticsearchSink:
    es_url: str
    index_prefix: str = ""
    chunk_size: int = 500
    max_retries: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    request_timeout: float = 60.0
    max_connections: int = 4  # concurrent bulk requests

    def index_name(self, entity: Entity) -> str:
        return index_name(entity, self.index_prefix)

    def client(self):
        from elasticsearch import Elasticsearch

        return Elasticsearch(self.es_url, request_timeout=self.request_timeout)

    def ensure_indices(self, entities: Iterable[Entity]) -> list[str]:
        """Create missing indices with the registry's mappings (never left to dynamic auto-creation)."""
        with self.client() as client:
            return [ensure_index(client, entity, self.index_name(entity)) for entity in entities]

    def write(self, rows: Sequence[tuple]) -> dict[str, int]:
        """Bulk-write (kind, id, version, deleted, doc) rows (postgres.IndexAction); returns the outcome counts."""
        if not rows:
            return {}
        indices = {kind: self.index_name(entity) for kind, entity in BY_NAME.items()}
        shares = max(1, min(self.max_connections, len(rows) // self.chunk_size))
        size = -(-len(rows) // shares)

        def write_share(client, share: Sequence[tuple]) -> dict[str, int]:
            return bulk_write(client, (action(indices[kind], *rest) for kind, *rest in share),
                              chunk_size=self.chunk_size, max_retries=self.max_retries,
                              initial_backoff=self.initial_backoff, max_backoff=self.max_backoff)

        totals: Counter = Counter()
        with self.client() as client, ThreadPoolExecutor(max_workers=shares) as pool:
            futures = [pool.submit(write_share, client, rows[start:start + size])
                       for start in range(0, len(rows), size)]
            for future in futures:
                totals.update(future.result())
        return dict(totals)
