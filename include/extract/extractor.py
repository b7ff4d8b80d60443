"""The incremental extraction of one entity: keyset pages from the source to Kafka, cursor after the acks.

Per entity there are two streams, each with its own cursor in `extract_cursors`: the records themselves
(cursor name = entity name) and the captured deletions, published as tombstones (`<entity>:deleted`).
A run first reads the source's clock (`Source.clock`): its `now`, and when the oldest write transaction still
open on it began. Then, per stream:

1. rows dated after `now` + `allowed_skew` are recorded as dead letters (`version_in_future`, with their key
   and version); they move no cursor and are looked at again on every run;
2. read up to `page_size` rows strictly after the current position and no newer than the read bound,
   `now` - `safety_margin`, in (version, key) order, in a reader thread that already reads the next page while
   this one is published;
3. encode each row with the message contract; a row without a required field (its key, its version), or
   with a value the contract cannot serialise, becomes a dead letter instead and the page goes on. The
   Postgres source encodes pages of well-formed rows itself (include/extract/encoding.py), to the same
   messages, and leaves any page with a row it cannot write exactly so to this row-by-row path. A message
   larger than the streaming job accepts (`max_payload_bytes`) or than the topic takes (the publisher's
   `max_value_bytes`) becomes a dead letter too (`payload_too_large`, with key, version and size);
4. hand the page to the producer; while the broker acknowledges it, the next pages are read and sent
   (at most `pages_in_flight` unsettled);
5. settle pages oldest first: wait until the broker acknowledged every message of the page (else raise, and
   nothing below runs), then in one warehouse transaction store its dead letters and move the cursor to its
   last row, but never past the start of the oldest open write transaction.

What this guarantees, and why:

- A process killed anywhere in this loop has moved the cursor only past acknowledged pages; the rerun sends
  the unfinished page again (at-least-once; downstream upserts by key and version, so a repeat is harmless).
- A row becomes visible when its transaction commits, but carries the time it was written. The cursor stays
  before every write transaction open when the run began (`SourceClock.oldest_open_write`), so a row that
  commits later is still ahead of the cursor, however late: the next run re-reads from there. The lookback
  (each run starts `lookback` before the stored cursor) is then a tuning knob, not the guarantee, except
  where the source cannot show when its open transactions began (a role without pg_read_all_stats, the REST
  source): then a warning is logged per entity and run, and only a commit within the lookback is found.
- The cursor never passes the read bound, so a future-dated row (a client's INSERT with any `updated_at`, a
  clock step) neither moves it nor blocks the rows written after it; once the clock reaches the row's version
  it is read and published like any other. The safety margin covers the instants between a row's stamp
  (`clock_timestamp()`) and its transaction taking an xid, and the REST source's clock being the client's.
- No row blocks its entity: a row too large for the job or the broker is a dead letter the cursor passes, so
  the source can be told (its id and size are in `dead_letters`, stage 'extract').
- Not covered: a client writing a version in the past (on INSERT, or a clock stepping back) by more than the
  lookback behind the cursor; such a row is found only by a backfill.

A backfill starts at a given time instead and moves the cursor only if it passes the stored one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

from include.contract import (MAX_PAYLOAD_BYTES, UnserialisableValue, encode, message_key, now_utc, record_message,
                              tombstone_message)
from include.entities import Entity
from include.extract.sources import AFTER_ALL_KEYS, POSTGREST_MAX_ROWS, EncodedPage, Position, Source, SourceClock
from include.extract.state import DeadLetter, ExtractState
from include.settings import SettingsError

if TYPE_CHECKING:
    # Only for annotations: DAG files import this module at parse time and must not load the Kafka client.
    from include.extract.publisher import InFlight, KafkaPublisher

log = logging.getLogger(__name__)

DELETIONS_SUFFIX = ":deleted"
# A page size every adapter accepts: the largest the REST API returns untruncated (ExtractConfig picks a larger
# one for the direct Postgres source).
DEFAULT_PAGE_SIZE = POSTGREST_MAX_ROWS
DEFAULT_LOOKBACK = dt.timedelta(minutes=5)
# Versions newer than the source's now minus this are left for a later run (see the module docstring).
DEFAULT_SAFETY_MARGIN = dt.timedelta(seconds=2)
# A version later than the source's now plus this is a dead letter (`version_in_future`), not a delayed row.
DEFAULT_ALLOWED_SKEW = dt.timedelta(minutes=1)
VERSION_IN_FUTURE = "version_in_future"
PAYLOAD_TOO_LARGE = "payload_too_large"


@dataclass(frozen=True)
class RunOptions:
    page_size: int = DEFAULT_PAGE_SIZE
    lookback: dt.timedelta = DEFAULT_LOOKBACK
    # Replay every row whose version is >= this time, instead of starting from the stored cursor.
    from_timestamp: dt.datetime | None = None
    # Stop each stream after reading this many rows (the parity function's `limit`); None reads to the end.
    max_rows: int | None = None
    # Pages sent but not yet acknowledged before the run waits for the oldest (bounds memory and re-sends).
    pages_in_flight: int = 4
    safety_margin: dt.timedelta = DEFAULT_SAFETY_MARGIN
    allowed_skew: dt.timedelta = DEFAULT_ALLOWED_SKEW
    # The largest message value published; a larger row is a dead letter. The streaming job's payload limit.
    max_payload_bytes: int = MAX_PAYLOAD_BYTES

    def __post_init__(self):
        if self.page_size < 1:
            raise ValueError(f"page_size must be positive, got {self.page_size}")
        if self.lookback < dt.timedelta(0):
            raise ValueError(f"lookback must not be negative, got {self.lookback}")
        if self.from_timestamp is not None and self.from_timestamp.tzinfo is None:
            raise ValueError(f"from_timestamp needs a time zone: {self.from_timestamp!r}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"max_rows must be positive, got {self.max_rows}")
        if self.pages_in_flight < 1:
            raise ValueError(f"pages_in_flight must be positive, got {self.pages_in_flight}")
        for name in ("safety_margin", "allowed_skew"):
            if getattr(self, name) < dt.timedelta(0):
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes must be positive, got {self.max_payload_bytes}")


@dataclass
class StreamResult:
    cursor_name: str
    start: Position | None
    pages: int = 0
    rows_read: int = 0
    published: int = 0
    dead_letters: int = 0
    # The stored cursor when the run ended (it does not move backwards, so it may be past `start`'s window).
    cursor: Position | None = None
    # True when an open write transaction on the source kept the cursor before the last rows read.
    cursor_held: bool = False


@dataclass
class EntityResult:
    entity: str
    records: StreamResult
    deletions: StreamResult

    def as_dict(self) -> dict:
        """Plain JSON types (for XCom and the command line), times in ISO-8601."""
        return json.loads(json.dumps(asdict(self), default=dt.datetime.isoformat))


@dataclass(frozen=True)
class _Read:
    """One page read from the source and encoded."""

    rows: int
    messages: list[tuple[bytes, bytes]]
    dead_letters: list[DeadLetter]
    # After the page's last row that has a version (see `last_position`).
    position: Position | None


@dataclass(frozen=True)
class _Stream:
    cursor_name: str
    # (entity, after, limit, processado_em, until) -> the page.
    read: Callable[[Entity, Position | None, int, dt.datetime, dt.datetime | None], _Read]
    # The source's rows as they are: (entity, after, limit) -> rows (to find those dated in the future).
    rows: Callable[[Entity, Position | None, int], list[dict]]


def start_position(stored: Position | None, options: RunOptions) -> Position | None:
    """Where a run starts reading: the backfill time, else the stored cursor minus the lookback window."""
    if options.from_timestamp is not None:
        return Position.at_or_after(options.from_timestamp)
    if stored is None:
        return None
    if not options.lookback:
        return stored
    return Position(stored.version - options.lookback, AFTER_ALL_KEYS)


def last_position(entity: Entity, rows: list[dict]) -> Position | None:
    """The keyset position after the page: its last row that has a version.

    A row without a key sorts after every keyed row of its version (NULLS LAST), so the position after it is
    past its whole version. Rows without a version sort after everything and are never returned by a keyset
    query again; a page made only of them has no position (None).
    """
    for row in reversed(rows):
        version = row.get(entity.version_column)
        if version is not None:
            key = row.get(entity.key)
            return Position(version, AFTER_ALL_KEYS if key is None else key)
    return None


def _raw_payload(row: dict) -> str:
    # Best effort on purpose: the dead letter must hold the row even when the row is what cannot be encoded.
    return json.dumps(row, default=str, ensure_ascii=False)


def encode_page(entity: Entity, rows: list[dict], to_message, processado_em: dt.datetime
                ) -> tuple[list[tuple[bytes, bytes]], list[DeadLetter]]:
    """(key, value) pairs for the good rows, dead letters for the rest, in one pass."""
    messages, rejects = [], []
    required = entity.required_fields  # a property that walks the registry: once per page, not per row
    for row in rows:
        missing = [name for name in required if row.get(name) is None]
        if missing:
            rejects.append(DeadLetter(entity.name, f"missing {', '.join(missing)}", _raw_payload(row)))
            continue
        try:
            message = to_message(entity, row, processado_em)
            messages.append((message_key(entity, message), encode(message)))
        except UnserialisableValue as error:
            rejects.append(DeadLetter(entity.name, f"unserialisable value: {error}", _raw_payload(row)))
    return messages, rejects


def read_bounds(clock: SourceClock, options: RunOptions) -> tuple[dt.datetime, Position | None]:
    """(the newest version a run reads, the furthest its cursor may move): the source's now minus the safety
    margin, and the position just before the oldest open write transaction began (None: none is open, or the
    source cannot tell)."""
    ceiling = None if clock.oldest_open_write is None else Position.at_or_after(clock.oldest_open_write)
    return clock.now - options.safety_margin, ceiling


def _small_payload(entity: Entity, key, version, **details) -> str:
    """A dead letter's payload naming the row without holding it: its key, its version (or source position) and
    `details`. The same row gives the same payload on every run, so the dead letter is recorded once (per
    version)."""
    if isinstance(version, dt.datetime):
        version = version.isoformat()
    return json.dumps({entity.key: None if key is None else str(key), entity.order_column: version, **details},
                      ensure_ascii=False)


def future_dead_letters(entity: Entity, rows: list[dict], now: dt.datetime) -> list[DeadLetter]:
    """A dead letter per row whose version lies beyond the source's clock and the allowed skew."""
    return [DeadLetter(entity.name, f"{VERSION_IN_FUTURE}: the source's clock read {now.isoformat()}",
                       _small_payload(entity, row.get(entity.key), row[entity.version_column]))
            for row in rows]


def split_oversized(entity: Entity, messages: list[tuple[bytes, bytes]], limit: int
                    ) -> tuple[list[tuple[bytes, bytes]], list[DeadLetter]]:
    """The messages whose value fits in `limit` bytes, and a dead letter (key, version, size) for each other."""
    if all(len(value) <= limit for _, value in messages):
        return messages, []
    kept, rejects = [], []
    for key, value in messages:
        if len(value) <= limit:
            kept.append((key, value))
            continue
        version = json.loads(value).get(entity.order_column)
        rejects.append(DeadLetter(entity.name, f"{PAYLOAD_TOO_LARGE}: {len(value)} bytes, the limit is {limit}",
                                  _small_payload(entity, key.decode(), version, bytes=len(value))))
    return kept, rejects


def _tombstone(entity: Entity, row: dict, processado_em: dt.datetime) -> dict:
    return tombstone_message(entity, row[entity.key], row[entity.version_column], processado_em)


def _encode(entity: Entity, rows: list[dict], to_message, processado_em: dt.datetime) -> _Read:
    messages, dead_letters = encode_page(entity, rows, to_message, processado_em)
    return _Read(len(rows), messages, dead_letters, last_position(entity, rows))


def _row_reader(read: Callable[..., list[dict]], to_message):
    """Pages of rows, encoded here one row at a time."""
    def read_page(entity: Entity, after: Position | None, limit: int, processado_em: dt.datetime,
                  until: dt.datetime | None) -> _Read:
        return _encode(entity, read(entity, after, limit, until), to_message, processado_em)
    return read_page


def _records_reader(source: Source):
    """The source's own encoding of its pages where it has one (PostgresSource), else the row-by-row path."""
    read_messages = getattr(source, "read_change_messages", None)
    if read_messages is None:
        return _row_reader(source.read_changes, record_message)

    def read_page(entity: Entity, after: Position | None, limit: int, processado_em: dt.datetime,
                  until: dt.datetime | None) -> _Read:
        page = read_messages(entity, after, limit, processado_em, until)
        if isinstance(page, EncodedPage):
            return _Read(len(page.messages), page.messages, [], page.position)
        return _encode(entity, page, record_message, processado_em)
    return read_page


@dataclass
class _Page:
    in_flight: InFlight
    position: Position | None
    rows: int
    dead_letters: list[DeadLetter]


def _dead_letter_future_rows(entity: Entity, stream: _Stream, state: ExtractState, clock: SourceClock,
                             options: RunOptions) -> int:
    """Record every row dated beyond the source's now plus the allowed skew as a dead letter; no cursor moves.

    The main read never reaches these rows (it stops at the read bound), so they block nothing; they are
    looked at again on every run, recorded once each (dead letters are unique per payload), and published
    normally once the clock has caught up with them."""
    after, found = Position(clock.now + options.allowed_skew, AFTER_ALL_KEYS), 0
    while after is not None:
        rows = stream.rows(entity, after, options.page_size)
        if rows:
            state.commit_page(stream.cursor_name, None, future_dead_letters(entity, rows, clock.now))
            found += len(rows)
        after = last_position(entity, rows) if len(rows) == options.page_size else None
    if found:
        log.warning("%s: %s rows are dated after the source's clock (%s) plus the allowed skew of %s; they are in "
                    "dead_letters (%s) and wait, unpublished, until the clock reaches them", stream.cursor_name,
                    found, clock.now.isoformat(), options.allowed_skew, VERSION_IN_FUTURE)
    return found


def _drain(entity: Entity, stream: _Stream, state: ExtractState, publisher: KafkaPublisher,
           options: RunOptions, clock: SourceClock) -> StreamResult:
    stored = state.cursor(stream.cursor_name)
    after = start_position(stored, options)
    until, ceiling = read_bounds(clock, options)
    result = StreamResult(stream.cursor_name, start=after, cursor=stored)
    log.info("%s: reading after %s up to version %s (stored cursor %s, cursor ceiling %s)", stream.cursor_name,
             after, until.isoformat(), stored, ceiling)
    result.dead_letters += _dead_letter_future_rows(entity, stream, state, clock, options)
    # What the streaming job would dead-letter, and what the broker would refuse (failing the run), is refused here.
    max_value_bytes = min(options.max_payload_bytes, publisher.max_value_bytes)

    def settle(page: _Page) -> None:
        # The cursor moves only here: after every message of the page, and of each page before it, is acked;
        # and never past the start of a write transaction still open when the run began.
        published = page.in_flight.wait()
        position = page.position
        if ceiling is not None and position is not None and position > ceiling:
            if not result.cursor_held:
                log.info("%s: cursor held at %s: a write transaction open since %s may still commit rows "
                         "before the rows read", stream.cursor_name, ceiling, clock.oldest_open_write)
            result.cursor_held = True
            position = ceiling
        state.commit_page(stream.cursor_name, position, page.dead_letters)
        result.pages += 1
        result.rows_read += page.rows
        result.published += published
        result.dead_letters += len(page.dead_letters)
        if page.dead_letters:
            log.warning("%s: %s rows of page %s went to dead_letters (first: %s)", stream.cursor_name,
                        len(page.dead_letters), result.pages, page.dead_letters[0].reason)

    def request(after: Position | None, so_far: int) -> tuple[Future, int] | None:
        """Start reading the page after `after` in the reader thread; None once max_rows rows were read."""
        if options.max_rows is not None and so_far >= options.max_rows:
            return None
        limit = options.page_size if options.max_rows is None else min(options.page_size, options.max_rows - so_far)
        return reader.submit(stream.read, entity, after, limit, now_utc(), until), limit

    # Pages handed to the producer but not settled yet, oldest first: the next page is read and encoded while
    # the broker acknowledges the previous ones.
    pending: deque[_Page] = deque()
    read = 0
    # The next page is read in a thread while this one is handed to the producer, the loop's bottleneck: the
    # source's query runs meanwhile, and its driver waits for it without the GIL. Leaving the block waits for a
    # read in progress.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="extract-read") as reader:
        next_page = request(after, read)
        while next_page is not None:
            reading, limit = next_page
            page = reading.result()
            if not page.rows:
                break
            read += page.rows
            next_page = None
            if page.position is None:
                log.warning("%s: a page without any versioned row ends the run; its rows are in dead_letters",
                            stream.cursor_name)
            # The source returns `limit` rows whenever that many remain, so a short page is the last one.
            elif page.rows == limit:
                next_page = request(page.position, read)
            messages, oversized = split_oversized(entity, page.messages, max_value_bytes)
            pending.append(_Page(publisher.send(messages), page.position, page.rows, page.dead_letters + oversized))
            while pending and (len(pending) > options.pages_in_flight or pending[0].in_flight.done):
                settle(pending.popleft())
    publisher.flush()
    while pending:
        settle(pending.popleft())
    result.cursor = state.cursor(stream.cursor_name)
    log.info("%s: %s pages, %s rows read, %s published, %s dead letters; cursor now %s", stream.cursor_name,
             result.pages, result.rows_read, result.published, result.dead_letters, result.cursor)
    return result


def require_version_column(entity: Entity) -> None:
    """The poller finds changes by the version column: an entity without one (ordered by source position) is cdc's."""
    if entity.ordered_by_position:
        raise SettingsError(f"entity {entity.name!r}: its table {entity.source_table!r} has no version column, so the "
                            "poller cannot find its changes; extract it with PIPELINE_EXTRACT_SOURCE=cdc")


def extract_entity(entity: Entity, source: Source, state: ExtractState, publisher: KafkaPublisher,
                   options: RunOptions = RunOptions()) -> EntityResult:
    """Publish the entity's changed rows, then tombstones for its deletions, each under its own cursor."""
    if entity.source_table is None:
        raise ValueError(f"entity {entity.name!r} has no source table to extract from")
    require_version_column(entity)
    if source.max_page_size is not None and options.page_size > source.max_page_size:
        raise ValueError(f"page size {options.page_size} exceeds the source's cap of {source.max_page_size} rows")
    # One clock for both streams: the later deletions stream only reads less than it could.
    clock = source.clock()
    if not clock.open_writes_visible:
        log.warning("%s: the source does not show when its open write transactions began; a transaction that "
                    "commits more than the lookback (%s) after writing can be missed", entity.name, options.lookback)
    records = _drain(entity, _Stream(entity.name, _records_reader(source), source.read_changes), state, publisher,
                     options, clock)
    deletions = _drain(entity, _Stream(entity.name + DELETIONS_SUFFIX, _row_reader(source.read_deletions, _tombstone),
                                       source.read_deletions), state, publisher, options, clock)
    return EntityResult(entity.name, records, deletions)
