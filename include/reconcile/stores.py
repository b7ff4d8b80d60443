"""Thin readers of what the reconciler compares: a registry table in a Postgres database (the source's or the
warehouse's) and an entity's Elasticsearch index. Each answers three questions: how many rows, the digest per
bucket, and the (id, version) pairs of some buckets. The arithmetic is in `compare`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Iterator, Sequence

from include.entities import Entity
from include.reconcile.compare import Digest, bucket_of, bucket_range, digests
from include.schema import render_sql_macro

log = logging.getLogger(__name__)

RECONCILE_SQL = "reconcile.sql"
# Bucket ranges per listing statement: bounded so that one statement stays well inside the statement timeout.
RANGES_PER_STATEMENT = 2000
# Hits per Elasticsearch page: its default index.max_result_window, the most one search may return.
ES_PAGE_SIZE = 10_000
PIT_KEEP_ALIVE = "2m"
# Bucket prefixes per listing query: well inside the default indices.query.bool.max_clause_count.
PREFIXES_PER_QUERY = 500


def fetch(connection, statement: str, parameters: dict | None = None) -> list[tuple]:
    """Rows of one statement on a DB-API connection (psycopg 2 or 3), in a transaction ended here."""
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, parameters or {})
            return cursor.fetchall()
    finally:
        connection.rollback()


class SqlStore:
    """One registry table in a Postgres database; `schema` None uses the connection's search_path. `by_content`:
    versions are hashes of the rows' content (reconcile.sql row_version), for an entity ordered by source position
    when the source is compared."""

    def __init__(self, name: str, connection, entity: Entity, table: str, schema: str | None = None,
                 by_content: bool = False):
        if entity.key_field.pg_type != "uuid":
            raise ValueError(f"entity {entity.name}: the reconciler buckets uuid keys, not {entity.key_field.pg_type}")
        self.name = name
        self.connection = connection
        self.entity = entity
        self.table = table
        self.schema = schema
        self.by_content = by_content
        self._digests: dict[int, dict[str, Digest]] = {}

    def _sql(self, macro: str) -> str:
        return render_sql_macro(RECONCILE_SQL, macro, entity=self.entity, schema=self.schema, table=self.table,
                                content=self.by_content)

    def count(self) -> int:
        (rows,), = fetch(self.connection, render_sql_macro(RECONCILE_SQL, "count", schema=self.schema,
                                                            table=self.table))
        return int(rows)

    def digests(self, digits: int) -> dict[str, Digest]:
        # Postgres is the reference of one comparison and the checked store of another: digested once per width.
        if digits not in self._digests:
            self._digests[digits] = {bucket: (int(rows), int(total)) for bucket, rows, total
                                     in fetch(self.connection, self._sql("digests"), {"digits": digits})}
        return self._digests[digits]

    def pairs(self, buckets: Sequence[str]) -> list[tuple[str, int]]:
        statement = self._sql("pairs")
        rows = []
        for start in range(0, len(buckets), RANGES_PER_STATEMENT):
            lo, hi = zip(*(bucket_range(b) for b in buckets[start:start + RANGES_PER_STATEMENT]))
            rows.extend((record_id, int(version)) for record_id, version
                        in fetch(self.connection, statement, {"lo": list(lo), "hi": list(hi)}))
        return rows


class ElasticStore:
    """One entity's index. Elasticsearch cannot sort or prefix-query `_id` (its field data is off by default), so
    the digests stream the whole index through a point in time in shard order, and buckets are kept client-side.
    Listing some buckets asks for them by the document's own id field (`key_field`, which the sink writes equal to
    `_id`), case-insensitively; a bucket whose listing does not hold as many documents as its digest counted (a
    document whose id field is absent or differs from its `_id`) is listed from a full stream instead."""

    name = "elasticsearch"

    def __init__(self, client, index: str, key_field: str = "id", page_size: int = ES_PAGE_SIZE):
        self.client = client
        self.index = index
        self.key_field = key_field
        self.page_size = page_size
        self._rows: dict[str, int] = {}  # documents per bucket, from the last digests

    def stream(self, query: dict | None = None) -> Iterator[tuple[str, int]]:
        """(_id, _version) of every document (matching `query`), in no particular order; nothing for a missing
        index."""
        from elasticsearch import NotFoundError

        try:
            pit = self.client.open_point_in_time(index=self.index, keep_alive=PIT_KEEP_ALIVE)["id"]
        except NotFoundError:
            log.warning("index %s does not exist: it holds no documents", self.index)
            return
        try:
            after = None
            while True:
                page = self.client.search(
                    pit={"id": pit, "keep_alive": PIT_KEEP_ALIVE}, size=self.page_size, source=False, version=True,
                    sort=[{"_shard_doc": "asc"}], search_after=after, track_total_hits=False, query=query)
                hits = page["hits"]["hits"]
                pit = page.get("pit_id", pit)
                for hit in hits:
                    yield hit["_id"], hit["_version"]
                if len(hits) < self.page_size:
                    return
                after = hits[-1]["sort"]
        finally:
            self.client.close_point_in_time(id=pit)

    def count(self) -> int:
        from elasticsearch import NotFoundError

        try:
            return int(self.client.count(index=self.index)["count"])
        except NotFoundError:
            return 0

    def digests(self, digits: int) -> dict[str, Digest]:
        result = digests(self.stream(), digits)
        self._rows = {bucket: rows for bucket, (rows, _) in result.items()}
        return result

    def pairs(self, buckets: Sequence[str]) -> list[tuple[str, int]]:
        if not buckets:
            return []
        digits = len(buckets[0])
        listed: list[tuple[str, int]] = []
        for start in range(0, len(buckets), PREFIXES_PER_QUERY):
            group = set(buckets[start:start + PREFIXES_PER_QUERY])
            query = {"bool": {"should": [{"prefix": {self.key_field: {"value": b, "case_insensitive": True}}}
                                         for b in sorted(group)]}}
            listed.extend((raw, version) for raw, version in self.stream(query) if bucket_of(raw, digits) in group)
        listed_rows = Counter(bucket_of(raw, digits) for raw, _ in listed)
        if all(listed_rows.get(b, 0) == self._rows.get(b, 0) for b in buckets):
            return listed
        log.warning("index %s: documents whose %s differs from their _id; listing %s buckets from a full stream",
                    self.index, self.key_field, len(buckets))
        wanted = set(buckets)
        return [(raw, version) for raw, version in self.stream() if bucket_of(raw, digits) in wanted]
