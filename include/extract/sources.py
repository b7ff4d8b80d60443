"""Where extracted rows come from: one interface, two adapters (direct Postgres, Supabase REST).

Both read in keyset order on (version column, key) - for leads `(updated_at, id)` - strictly after a
`Position`, so a page boundary falling inside thousands of rows that share one `updated_at` neither skips
nor repeats any of them, and the cost of a page does not grow with the depth of the table as OFFSET would.
"""

from __future__ import annotations

import datetime as dt
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from include.contract import now_utc
from include.entities import Entity
from include.extract.encoding import EARLIEST, LATEST, TEXT_TYPES, can_encode, encode_rows, last_version_and_key
from include.schema import quote_ident, render_sql

log = logging.getLogger(__name__)

# Greater than every uuid: a Position with this key lies after every row of its version. It lets "every row
# at or after time t" be expressed as the keyset position (t - 1 microsecond, AFTER_ALL_KEYS), which keeps one
# query shape (and its index) for incremental runs, lookback windows and backfills alike.
AFTER_ALL_KEYS = "ffffffff-ffff-ffff-ffff-ffffffffffff"
# timestamptz resolution in PostgreSQL.
RESOLUTION = dt.timedelta(microseconds=1)
# PostgREST's default `db-max-rows`: a larger request is cut to this size without any error.
POSTGREST_MAX_ROWS = 1000
# How far the REST source holds its bound back from the client's clock (see SupabaseRestSource.clock).
DEFAULT_REST_CLOCK_MARGIN = dt.timedelta(seconds=30)


# Whether the encoded page query applies: every named column of the table has the named type (`to_regtype`
# spelling, e.g. `text[]`), and text reaches the client as text (under SQL_ASCII psycopg hands over bytes, which
# the contract rejects and msgspec would write as base64).
_ENCODED_QUERY_APPLIES = """
SELECT count(*) = cardinality(CAST(%(names)s AS text[])) AND current_setting('client_encoding') <> 'SQL_ASCII'
FROM unnest(CAST(%(names)s AS text[]), CAST(%(types)s AS text[])) AS expected (name, type)
JOIN pg_catalog.pg_attribute AS a ON a.attname = expected.name AND a.atttypid = to_regtype(expected.type)
WHERE a.attrelid = to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped
"""


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


@dataclass(frozen=True)
class EncodedPage:
    """A page the source encoded itself: one (key, value) message per row, in keyset order."""

    messages: list[tuple[bytes, bytes]]
    # After the page's last row; None for an empty page.
    position: Position | None


@dataclass(frozen=True)
class SourceClock:
    """The source's time when a stream's run starts: what bounds the versions it reads and its cursor."""

    now: dt.datetime
    # When the oldest write transaction still open on the source started; None when none is open, or when
    # `open_writes_visible` is False.
    oldest_open_write: dt.datetime | None
    # False when the source cannot show when every open write transaction started (a role without the rights
    # to, or a REST API that does not expose it): then only the lookback covers late commits.
    open_writes_visible: bool


def deletion_row(entity: Entity, record_id: Any, deleted_at: dt.datetime) -> dict:
    """A captured deletion, shaped like a row of the entity so one keyset loop serves both."""
    return {entity.key: record_id, entity.version_column: deleted_at}


class Source(Protocol):
    """What the extraction reads. A source may also offer `read_change_messages` (as PostgresSource does):
    `read_changes` with the page already encoded; the extraction uses it where it is present."""

    # The largest page the source returns without truncating; None when it has no cap.
    max_page_size: int | None

    def clock(self) -> SourceClock:
        """The source's current time and its oldest open write transaction."""

    def read_changes(self, entity: Entity, after: Position | None, limit: int,
                     until: dt.datetime | None = None) -> list[dict]:
        """Up to `limit` rows of the entity after `after` (from the beginning when None) whose version is at
        most `until` (any when None), in keyset order."""

    def read_deletions(self, entity: Entity, after: Position | None, limit: int,
                       until: dt.datetime | None = None) -> list[dict]:
        """Up to `limit` captured deletions as `deletion_row`s after `after`, up to `until`, in keyset order."""

    def count(self, entity: Entity, since: dt.datetime | None = None) -> int:
        """Rows of the entity, or only those whose version is >= since."""


def _field_type(entity: Entity, name: str) -> str:
    return next(f.pg_type for f in entity.fields if f.name == name)


class PostgresSource:
    """Reads the Supabase database directly over a DB-API connection (psycopg 2 from Airflow's PostgresHook,
    or psycopg 3). The connection must carry a statement_timeout; `schema` is `public` on Supabase.

    Its changes come already encoded where it can (`read_change_messages`): Postgres formats the values and
    msgspec writes the JSON, for about an eighth of the CPU that building Python objects and encoding them row
    by row costs."""

    max_page_size = None

    def __init__(self, connection, schema: str = "public"):
        self.connection = connection
        self.schema = schema

    @contextmanager
    def _transaction(self):
        try:
            with self.connection.cursor() as cursor:
                yield cursor
        finally:
            # Each page is read in its own short transaction: one left open between pages would sit "idle in
            # transaction" on Supabase for the whole run, holding back vacuum.
            self.connection.rollback()

    def _fetch(self, template: str, params: dict, **context) -> list[tuple]:
        with self._transaction() as cursor:
            cursor.execute(render_sql(template, schema=self.schema, **context), params)
            return cursor.fetchall()

    def clock(self) -> SourceClock:
        """`clock_timestamp()` and the oldest `xact_start` among this database's backends holding an xid.

        Rows are stamped by the source's own clock (the version column's default and trigger use
        `clock_timestamp()`), so the bound and the versions come from one clock. Which open transactions this
        role sees: every backend's `backend_xid` is visible to every role, but `xact_start` (like `query`,
        `state`) only for sessions of roles this role is a member of, unless it is a superuser or a member of
        `pg_read_all_stats` (PostgreSQL's "Statistics Views" docs: "In rows about other sessions, many columns
        will be null"; checked on PostgreSQL 15: another role's write shows `backend_xid`, NULL `xact_start` and
        `<insufficient privilege>` as its query). Hosted Supabase gives no superuser; its `postgres` role may lack
        `pg_read_all_stats`, and Supabase's own troubleshooting guide grants it (`grant pg_read_all_stats to
        postgres;`). Without it, writes by other roles (e.g. `authenticated` through PostgREST) count here as
        hidden: `open_writes_visible` is False and the run falls back to its lookback, with a warning."""
        [(now, oldest, hidden)] = self._fetch("extract_bounds.sql", {})
        return SourceClock(now, None if hidden else oldest, open_writes_visible=not hidden)

    @staticmethod
    def _keyset_params(after: Position | None, limit: int, until: dt.datetime | None = None) -> dict:
        params: dict[str, Any] = {"limit": limit, "until": until}
        if after is not None:
            params.update(after_version=after.version, after_key=after.key)
        return params

    def _page_sql(self, entity: Entity, after: Position | None, until: dt.datetime | None, encoded: bool) -> str:
        return render_sql(
            "extract_page.sql",
            schema=self.schema,
            entity=entity,
            keyset=after is not None,
            until=until is not None,
            version_type=_field_type(entity, entity.version_column),
            key_type=_field_type(entity, entity.key),
            encoded=encoded,
            text_types=TEXT_TYPES,
        )

    def read_changes(self, entity: Entity, after: Position | None, limit: int,
                     until: dt.datetime | None = None) -> list[dict]:
        with self._transaction() as cursor:
            cursor.execute(self._page_sql(entity, after, until, encoded=False),
                           self._keyset_params(after, limit, until))
            rows = cursor.fetchall()
        names = entity.field_names
        return [dict(zip(names, row)) for row in rows]

    def read_change_messages(self, entity: Entity, after: Position | None, limit: int,
                             processado_em: dt.datetime, until: dt.datetime | None = None
                             ) -> EncodedPage | list[dict]:
        """The page as finished messages (include/extract/encoding.py) when the table's columns have the
        registry's types and every row can be written as the contract writes it; otherwise its rows, as
        `read_changes` returns them, for the row-by-row path."""
        if not can_encode(entity):
            return self.read_changes(entity, after, limit, until)
        table = f"{quote_ident(self.schema)}.{quote_ident(entity.source_table)}"
        with self._transaction() as cursor:
            # The lock a SELECT takes anyway, taken first: the column types checked next cannot change before
            # the page is read (the encoded query writes the contract's values only for the registry's types).
            cursor.execute(f"LOCK TABLE {table} IN ACCESS SHARE MODE")
            cursor.execute(_ENCODED_QUERY_APPLIES, {"table": table, "names": list(entity.field_names),
                                                    "types": [f.pg_type for f in entity.fields]})
            [applies] = cursor.fetchone()
            rows = None
            if applies:
                cursor.execute(self._page_sql(entity, after, until, encoded=True),
                               self._keyset_params(after, limit, until) | {"earliest": EARLIEST, "latest": LATEST})
                rows = cursor.fetchall()
        messages = None if rows is None else encode_rows(entity, rows, processado_em)
        if messages is None:
            return self.read_changes(entity, after, limit, until)
        return EncodedPage(messages, Position(*last_version_and_key(entity, rows)) if rows else None)

    def read_deletions(self, entity: Entity, after: Position | None, limit: int,
                       until: dt.datetime | None = None) -> list[dict]:
        params = self._keyset_params(after, limit, until) | {"entity": entity.name}
        rows = self._fetch("extract_deletions.sql", params, keyset=after is not None, until=until is not None)
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

    def __init__(self, client, max_rows: int = POSTGREST_MAX_ROWS,
                 clock_margin: dt.timedelta = DEFAULT_REST_CLOCK_MARGIN):
        self.client = client
        self.max_page_size = max_rows
        self.clock_margin = clock_margin

    @classmethod
    def connect(cls, url: str, key: str, schema: str = "public", timeout_s: float = 60.0,
                max_rows: int = POSTGREST_MAX_ROWS,
                clock_margin: dt.timedelta = DEFAULT_REST_CLOCK_MARGIN) -> SupabaseRestSource:
        from supabase import ClientOptions, create_client

        options = ClientOptions(schema=schema, postgrest_client_timeout=timeout_s)
        return cls(create_client(url, key, options=options), max_rows=max_rows, clock_margin=clock_margin)

    def clock(self) -> SourceClock:
        """The client's clock minus `clock_margin`, and no view of open transactions.

        PostgREST exposes neither the database's clock nor pg_stat_activity without a function created for it
        (an RPC), and its HTTP `Date` header has whole seconds from the gateway's clock, not the database's. So
        the bound is this machine's clock held back by a margin larger than the clock skew between it and the
        database can be (NTP keeps both within well under a second; the default leaves 30 s), and late commits
        are covered by the lookback only: `open_writes_visible` is False."""
        return SourceClock(now_utc() - self.clock_margin, None, open_writes_visible=False)

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
              limit: int, until: dt.datetime | None, **equals) -> list[dict]:
        self._check_limit(limit)
        query = self.client.table(table).select(columns)
        for column, value in equals.items():
            query = query.eq(column, value)
        if after is not None:
            query = query.or_(self._keyset_filter(version_column, key, after))
        if until is not None:
            query = query.lte(version_column, until.isoformat())
        query = query.order(version_column).order(key).limit(limit)
        rows = self._execute(table, query).data
        if len(rows) > limit:
            raise SourceError(f"Supabase REST returned {len(rows)} rows of {table!r} for a limit of {limit}")
        return rows

    def read_changes(self, entity: Entity, after: Position | None, limit: int,
                     until: dt.datetime | None = None) -> list[dict]:
        rows = self._page(entity.source_table, ",".join(entity.field_names), entity.version_column, entity.key,
                          after, limit, until)
        timestamps = [f.name for f in entity.fields if f.type == "timestamptz"]
        for row in rows:
            for name in timestamps:
                row[name] = _parse_timestamp(row.get(name))
        return rows

    def read_deletions(self, entity: Entity, after: Position | None, limit: int,
                       until: dt.datetime | None = None) -> list[dict]:
        rows = self._page("deleted_records", "id,deleted_at", "deleted_at", "id", after, limit, until,
                          entity=entity.name)
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
