"""Elasticsearch sink: versioned bulk writes of a micro-batch's newest rows with the Python client's bulk helper.

ES-Hadoop publishes no Spark 4 connector. The rows come from the Postgres merge (postgres.IndexAction: the newest
row per id that Postgres took, minus the updates a recorded deletion suppresses), streamed from a server-side
cursor inside the merge's still-open transaction. The driver groups them into requests of at most `chunk_size`
documents and `max_chunk_bytes` bytes and keeps at most `max_connections` requests in flight, each through
`helpers.streaming_bulk` (which retries 429 and 5xx with exponential backoff); so the driver holds a bounded
number of bytes whatever the batch or the documents' sizes. A document's `_id` is the entity id and its version
the epoch-microseconds of the entity's version column, with `version_type=external_gte`: an older version cannot
overwrite a newer document and a replay (same version) rewrites it unchanged. Tombstones are deletes with the same
external version.

`_source` is the JSON text spark/transforms.py rendered (the same document Postgres loaded). A bulk response of
200 can hide failed items, so every item is inspected: a version conflict (stale data) and deleting an absent
document are the intended outcomes; a 400 (mapper_parsing_exception, document_parsing_exception,
illegal_argument_exception, ...) means Elasticsearch refuses the document itself, which would fail every replay
the same way: it is returned as a refusal, and the merge (spark/sinks/postgres.py) takes the row out of Postgres
too, before its commit, and dead-letters it. Anything else (429 or 5xx once retries ran out, an index missing, a
blocked index, connection errors, timeouts) raises and fails the batch, which is replayed.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from include.entities import BY_NAME, Entity
from include.schema import ensure_index
from spark.sinks.postgres import IndexAction, Refusal, refusal_reason

RETRY_STATUS = (429, 500, 502, 503, 504)
VERSION_TYPE = "external_gte"
# A bulk item with this status is refused for the document itself (mapping, parsing, an illegal value), unless its
# error is about the index's state, which an operator mends and a replay then gets past.
REFUSED_STATUS = 400
INDEX_STATE_ERRORS = frozenset({"index_closed_exception", "index_not_found_exception", "cluster_block_exception",
                                "invalid_index_name_exception", "no_shard_available_action_exception"})
REFUSED = "refused"


class BulkItemError(RuntimeError):
    """A bulk item failed in a way that retrying or ignoring would hide."""


def action(index: str, document_id: str, version: int, deleted: bool, document: str | None) -> dict:
    """The bulk action of one document; `_source` stays the JSON text as rendered."""
    operation = {"_op_type": "delete" if deleted else "index", "_index": index, "_id": document_id,
                 "version": version, "version_type": VERSION_TYPE}
    if not deleted:
        operation["_source"] = document
    return operation


def outcome(ok: bool, item: dict) -> str:
    """What a bulk item result means (REFUSED: the document itself was refused); raises BulkItemError for a
    failure of the sink."""
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
    if status == REFUSED_STATUS and error_type not in INDEX_STATE_ERRORS:
        return REFUSED
    raise BulkItemError(
        f"{operation} {info.get('_index')}/{info.get('_id')} failed with status {status}: {error}"
    )


def refused_detail(item: dict) -> tuple[str, str, str]:
    """(index, id, error type and reason) of a refused bulk item."""
    _, info = next(iter(item.items()))
    error = info.get("error") if isinstance(info.get("error"), dict) else {}
    detail = ": ".join(str(part) for part in (error.get("type"), error.get("reason")) if part)
    return info.get("_index"), info.get("_id"), detail or f"status {info.get('status')}"


@dataclass
class BulkResult:
    counts: Counter = field(default_factory=Counter)  # outcome -> items
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (index, id, detail)

    def add(self, other: "BulkResult") -> None:
        self.counts.update(other.counts)
        self.refused.extend(other.refused)


def bulk_write(client, actions: Iterable[dict], *, chunk_size: int, max_retries: int, initial_backoff: float,
               max_backoff: float, max_chunk_bytes: int = 100 * 1024 * 1024) -> BulkResult:
    """Bulk-write actions through one client; returns their outcome counts and the refused items."""
    from elasticsearch.helpers import streaming_bulk

    result = BulkResult()
    for ok, item in streaming_bulk(
        client, actions, chunk_size=chunk_size, max_chunk_bytes=max_chunk_bytes, max_retries=max_retries,
        initial_backoff=initial_backoff, max_backoff=max_backoff, retry_on_status=RETRY_STATUS,
        raise_on_error=False,  # items come back to `outcome`, which decides
    ):
        verdict = outcome(ok, item)
        result.counts[verdict] += 1
        if verdict == REFUSED:
            result.refused.append(refused_detail(item))
    return result


def chunks(actions: Iterable[dict], *, max_actions: int, max_bytes: int) -> Iterator[list[dict]]:
    """Consecutive groups of actions of at most `max_actions` and, but for a single larger one, `max_bytes` of
    source text."""
    chunk: list[dict] = []
    size = 0
    for item in actions:
        item_bytes = len(item.get("_source") or "")
        if chunk and (len(chunk) >= max_actions or size + item_bytes > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += item_bytes
    if chunk:
        yield chunk


@dataclass(frozen=True)
class ElasticsearchSink:
    es_url: str
    index_prefix: str = ""
    chunk_size: int = 500
    max_chunk_bytes: int = 10 * 1024 * 1024  # per request, the size Elasticsearch's guide suggests
    max_retries: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    request_timeout: float = 60.0
    max_connections: int = 4  # concurrent bulk requests

    def index_name(self, entity: Entity) -> str:
        return entity.index_name(self.index_prefix)

    def client(self):
        from elasticsearch import Elasticsearch

        return Elasticsearch(self.es_url, request_timeout=self.request_timeout)

    def ensure_indices(self, entities: Iterable[Entity]) -> list[str]:
        """Create missing indices with the registry's mappings (never left to dynamic auto-creation)."""
        with self.client() as client:
            return [ensure_index(client, entity, self.index_name(entity)) for entity in entities]

    def write(self, rows: Iterable[IndexAction]) -> tuple[dict[str, int], list[Refusal]]:
        """Bulk-write (kind, id, version, deleted, doc) rows, consumed in the caller's thread; returns the outcome
        counts and the documents refused for their data as (kind, id, reason)."""
        indices = {kind: self.index_name(entity) for kind, entity in BY_NAME.items()}
        kinds = {index: kind for kind, index in indices.items()}
        actions = (action(indices[kind], *rest) for kind, *rest in rows)
        total = BulkResult()

        def write_chunk(client, chunk: list[dict]) -> BulkResult:
            return bulk_write(client, chunk, chunk_size=len(chunk), max_chunk_bytes=self.max_chunk_bytes,
                              max_retries=self.max_retries, initial_backoff=self.initial_backoff,
                              max_backoff=self.max_backoff)

        def settle(futures: set[Future], *, until: int) -> set[Future]:
            while len(futures) > until:
                done, futures = wait(futures, return_when=FIRST_COMPLETED)
                for future in done:
                    total.add(future.result())
            return futures

        with self.client() as client, ThreadPoolExecutor(max_workers=self.max_connections) as pool:
            in_flight: set[Future] = set()
            for chunk in chunks(actions, max_actions=self.chunk_size, max_bytes=self.max_chunk_bytes):
                in_flight = settle(in_flight, until=self.max_connections - 1)
                in_flight.add(pool.submit(write_chunk, client, chunk))
            settle(in_flight, until=0)
        unknown = sorted({index for index, _, _ in total.refused} - set(kinds))
        if unknown:  # an alias resolving elsewhere: the refusals cannot be traced back to their rows
            raise BulkItemError(f"items refused in indices the sink did not write to: {unknown}")
        refused = [(kinds[index], document_id, refusal_reason("elasticsearch", detail))
                   for index, document_id, detail in total.refused]
        return dict(total.counts), refused
