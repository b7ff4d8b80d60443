"""Where extracted rows come from: one interface, two adapters (direct Postgres, Supabase REST).

Both read in keyset order on (version column, key) - for leads `(updated_at, id)` - strictly after a
`Position`, so a page boundary falling inside thousands of rows that share one `updated_at` neither skips
nor repeats any of them, and the cost of a page does not grow with the depth of the table as OFFSET would.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from include.entities import Entity
from include.schema import render_sql

log = logging.getLogger(__name__)

# Greater than every uuid: a Position with this key lies after every row of its version. It lets "every row
# at or after time t" be expressed as the keyset position (t - 1 microsecond, AFTER_ALL_KEYS), which keeps one
# query shape (and its index) for incremental runs, lookback windows and backfills alike.
AFTER_ALL_KEYS = "ffffffff-ffff-ffff-ffff-ffffffffffff"
# timestamptz resolution in PostgreSQL.
RESOLUTION = dt.timedelta(microseconds=1)
# PostgREST's default `db-max-rows`: a larger request is cut to this size without any error.
POSTGREST_MAX_ROWS = 1000


class SourceError(RuntimeError):
    """The source could not be read; the message names the source and the table."""


@dataclass(frozen=True, order=True)
class Position:
    """A point in keyset order: every row with (version, key) greater than this one comes after it."""

    version: dt.datetime
    key: str

    def __post_init__(self):
        if self.version.tzinfo is None:
            raise ValueError(f"a cursor position needs a time zone: {self.version!r}")
        # Lower-case canonical uuids compare as strings exactly as PostgreSQL compares uuids.
        object.__setattr__(self, "key", str(self.key).lower())

    def __str__(self) -> str:
        return f"({self.version.isoformat()}, {self.key})"

    @classmethod
    def at_or_after(cls, moment: dt.datetime) -> Position:
        """The position just before every row whose version is >= moment."""
        return cls(moment - RESOLUTION, AFTER_ALL_KEYS)


def deletion_row(entity: Entity, record_id: Any, deleted_at: dt.datetime) -> dict:
    """A captured deletion, shaped like a row of the entity so one keyset loop serves both."""
    return {entity.key: record_id, entity.version_column: deleted_at}


class Source(Protocol):
    # The largest page the source returns without truncating; None when it has no cap.
    max_page_size: int | None

    def read_changes(self, entity: Entity, after: Position | None, limit: int) -> list[dict]:
        """Up to `limit` rows of the entity after `after` (from the beginning when None), in keyset order."""

    def read_deletions(self, entity: Entity, after: Position | None, limit: int) -> list[dict]:
        """Up to `limit` captured deletions as `deletion_row`s after `after`, in keyset order."""

    def count(self, entity: Entity, since: dt.datetime | None = None) -> int:
        """Rows of the entity, or only those whose version is >= since."""


def _field_type(entity: Entity, name: str) -> str:
    return next(f.pg_type for f in entity.fields if f.name == name)


class PostgresSource:
    """Reads the Supabase database directly over a DB-API connection (psycopg 2 from Airflow's PostgresHook,
    or psycopg 3). The connection must carry a statement_timeout; `schema` is `public` on Supabase."""

    max_page_size = None

    def __init__(self, connection, schema: str = "public"):
        self.connection = connection
        self.schema = schema

    def _fetch(self, template: str, params: dict, **context) -> list[tuple]:
        sql = render_sql(template, schema=self.schema, **context)
        try:
            with self.connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        finally:
            # Each page is read in its own short transaction: one left open between pages would sit "idle in
            # transaction" on Supabase for the whole run, holding back vacuum.
            self.connection.rollback()

    @staticmethod
    def _keyset_params(after: Position | None, limit: int) -> dict:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params.update(after_version=after.version, after_key=after.key)
        return params

    def read_changes(self, entity: Entity, after: Position | None, limit: int) -> list[dict]:
        rows = self._fetch(
            "extract_page.sql",
            self._keyset_params(after, limit),
            entity=entity,
            keyset=after is not None,
            version_type=_field_type(entity, entity.version_column),
            key_type=_field_type(entity, entity.key),
        )
        names = entity.field_names
        return [dict(zip(names, row)) for row in rows]

    def read_deletions(self, entity: Entity, after: Position | None, limit: int) -> list[dict]:
        params = self._keyset_params(after, limit) | {"entity": entity.name}
        rows = self._fetch("extract_deletions.sql", params, keyset=after is not None)
        return [deletion_row(entity, record_id, deleted_at) for record_id, deleted_at in rows]

    def count(self, entity: Entity, since: dt.datetime | None = None) -> int:
        rows = self._fetch("extract_count.sql", {"since": since}, entity=entity, since=since is not None)
        return rows[0][0]


class SupabaseRestSource:
    """Reads Supabase through its REST API (PostgREST) with the official supabase-py client.

    PostgREST answers at most `db-max-rows` rows per request (1,000 by default) and truncates larger requests
    silently, so a page may not be larger than `max_rows`: otherwise a truncated page would look short and end
    the run early. Keyset order is explicit (`order=version.asc,key.asc`) and the position filter is an
    `or=(version.gt.T,and(version.eq.T,key.gt.K))`, the REST form of the row comparison the Postgres adapter
    uses. Timestamps arrive as ISO strings and are parsed back to datetimes, so both adapters hand the
    extraction the same values.

    No PostgREST server runs in this project's local stack, so this adapter is tested only at the HTTP
    boundary (request paths, filters, order, limit, apikey and Authorization headers, several pages, HTTP
    errors) with respx; it has never met a real PostgREST here.
    """

    def __init__(self, client, max_rows: int = POSTGREST_MAX_ROWS):
        self.client = client
        self.max_page_size = max_rows

    @classmethod
    def connect(cls, url: str, key: str, schema: str = "public", timeout_s: float = 60.0,
                max_rows: int = POSTGREST_MAX_ROWS) -> SupabaseRestSource:
        from supabase import ClientOptions, create_client

        options = ClientOptions(schema=schema, postgrest_client_timeout=timeout_s)
        return cls(create_client(url, key, options=options), max_rows=max_rows)

    def _check_limit(self, limit: int) -> None:
        if not 1 <= limit <= self.max_page_size:
            raise ValueError(
                f"page size {limit} is outside 1..{self.max_page_size} (PostgREST db-max-rows): a larger request "
                "would be truncated silently and look like the last page"
            )

    @staticmethod
    def _keyset_filter(version_column: str, key: str, after: Position) -> str:
        # Values are double-quoted: timestamps contain ':' and '.', which PostgREST's filter syntax reserves.
        version = f'"{after.version.isoformat()}"'
        return (f'{version_column}.gt.{version},'
                f'and({version_column}.eq.{version},{key}.gt."{after.key}")')

    def _execute(self, table: str, query):
        from postgrest.exceptions import APIError

        try:
            return query.execute()
        except APIError as error:
            raise SourceError(f"Supabase REST read of {table!r} failed: {error.code} {error.message}") from error

    def _page(self, table: str, columns: str, version_column: str, key: str, after: Position | None,
              limit: int, **equals) -> list[dict]:
        self._check_limit(limit)
        query = self.client.table(table).select(columns)
        for column, value in equals.items():
            query = query.eq(column, value)
        if after is not None:
            query = query.or_(self._keyset_filter(version_column, key, after))
        query = query.order(version_column).order(key).limit(limit)
        rows = self._execute(table, query).data
        if len(rows) > limit:
            raise SourceError(f"Supabase REST returned {len(rows)} rows of {table!r} for a limit of {limit}")
        return rows

    def read_changes(self, entity: Entity, after: Position | None, limit: int) -> list[dict]:
        rows = self._page(entity.source_table, ",".join(entity.field_names), entity.version_column, entity.key,
                          after, limit)
        timestamps = [f.name for f in entity.fields if f.type == "timestamptz"]
        for row in rows:
            for name in timestamps:
                row[name] = _parse_timestamp(row.get(name))
        return rows

    def read_deletions(self, entity: Entity, after: Position | None, limit: int) -> list[dict]:
        rows = self._page("deleted_records", "id,deleted_at", "deleted_at", "id", after, limit, entity=entity.name)
        return [deletion_row(entity, row["id"], _parse_timestamp(row["deleted_at"])) for row in rows]

    def count(self, entity: Entity, since: dt.datetime | None = None) -> int:
        from postgrest.types import CountMethod

        query = self.client.table(entity.source_table).select(entity.key, count=CountMethod.exact, head=True)
        if since is not None:
            query = query.gte(entity.version_column, since.isoformat())
        response = self._execute(entity.source_table, query)
        if response.count is None:
            raise SourceError(f"Supabase REST gave no row count for {entity.source_table!r} (Content-Range missing)")
        return response.count


def _parse_timestamp(value):
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value
