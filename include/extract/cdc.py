"""The `cdc` extraction: the source's write-ahead log, read through a logical replication slot, to Kafka.

Postgres decodes the WAL with `pgoutput` (built in; include/extract/pgoutput.py reads its messages) for a
publication of the registry's source tables, and streams it over psycopg2's replication connection. A run:

1. makes sure the publication (inserts, updates, deletes of the source tables) and the slot exist; a new slot
   exports the snapshot it starts from, and the run first copies every existing row under that snapshot
   (the initial snapshot), in keyset pages on the key, each acknowledged before its progress is recorded;
2. writes a marker into the WAL (`pg_logical_emit_message`, not transactional): the WAL end at the run's start;
3. reads the slot from its confirmed position up to that marker. Every insert and update is published as the row,
   every delete as a tombstone dated at its commit, each with its source position (`source_position`: commit LSN
   and index of the change in its transaction), in pages;
4. confirms a position to the slot (flush_lsn of a standby status update) only once the broker acknowledged
   every message before it: a commit's end after its transaction's last page, the marker at the end.

So a run killed anywhere leaves the slot at a position whose every change is on the broker; the next run starts
there and republishes what came after (duplicates, which the sinks' newest-wins upserts absorb; never a gap).

The slot is recorded in the warehouse (`extract_cdc_slots`). A slot recorded there but missing on the source, or
invalidated by `max_slot_wal_keep_size`, stops the run with `SlotLost`: the changes since its last confirmation
are gone from the WAL, and only a new initial snapshot (the `resnapshot` option, the DAG's param) recovers.

A snapshot killed mid-way resumes from its recorded progress, with the slot kept, under the snapshot a temporary
slot exports: the rows still to copy are read as they are now and dated at that slot's consistent point, which is
exactly where its snapshot sits in commit order. The slot then replays the changes since its own start: those the
rows already hold are dated before that point and lose in the sinks, those they lack after it and win, so no row
steps back, whether ordered by version or by source position.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import select
import time
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from include.contract import MAX_PAYLOAD_BYTES, now_utc, record_message, tombstone_message
from include.entities import EXTRACTED, SOURCE_POSITION, Entity
from include.extract.encoding import ChangeEncoder
from include.extract.extractor import encode_page, split_oversized
from include.extract.pgoutput import (UNCHANGED, Begin, Change, Commit, LogicalMessage, PgOutputDecoder,
                                      Relation, RowLoader, format_lsn, parse_lsn)
from include.extract.publisher import InFlight, KafkaPublisher
from include.extract.state import DeadLetter, ExtractState
from include.schema import quote_ident

log = logging.getLogger(__name__)

MARKER_PREFIX = "pipeline_cdc_run"
# How long a run waits for its marker to come through the slot before it fails: the slot has a backlog to decode
# first, which at the measured rate is minutes for millions of changes; the DAG's execution timeout is 30 minutes.
MARKER_TIMEOUT_S = 20 * 60
# How long a run waits for the source to show its last confirmation.
CONFIRM_TIMEOUT_S = 30
# How long a run waits for a previous run's walsender to let go of the slot.
INACTIVE_TIMEOUT_S = 30


class CdcError(RuntimeError):
    """The cdc extraction cannot go on; the message says why and what to do."""


class SlotLost(CdcError):
    """The slot was dropped or invalidated: changes since its last confirmation are no longer in the WAL."""


def source_position(commit_lsn: int, index: int) -> str:
    """A change's place in the source's commit order, as a string that sorts as the positions do: the commit
    LSN (16 hex digits) and the change's index in its transaction (8 hex digits)."""
    return f"{commit_lsn:016X}/{index:08X}"


@contextmanager
def temporary_snapshot(dsn: str, slot: str) -> Iterator[tuple[int, str]]:
    """(consistent point, exported snapshot) of a temporary slot, for a copy that resumes or extends the initial
    snapshot: the snapshot holds exactly the transactions that committed before that point. The slot and its
    snapshot live as long as their replication connection, closed on leaving."""
    import psycopg2
    import psycopg2.extras

    connection = psycopg2.connect(dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    try:
        cursor = connection.cursor()
        cursor.execute(f"CREATE_REPLICATION_SLOT {quote_ident(f'{slot[:40]}_copy_{uuid.uuid4().hex[:8]}')} "
                       "TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT")
        _name, consistent_point, snapshot, _plugin = cursor.fetchone()
        yield parse_lsn(consistent_point), snapshot
    finally:
        connection.close()


def wait_inactive(source, slot: str) -> None:
    """The walsender of a run that just ended (or was killed) holds the slot until it notices; wait for it."""
    deadline = time.monotonic() + INACTIVE_TIMEOUT_S
    while source.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active", [slot]).fetchone():
        if time.monotonic() > deadline:
            raise CdcError(f"replication slot {slot!r} is still in use by another process after "
                           f"{INACTIVE_TIMEOUT_S} s (another run of the extraction?)")
        time.sleep(0.1)


def drop_slot(source, slot: str) -> bool:
    """Drop the slot once no walsender holds it, over a psycopg connection to its database; False: none."""
    if source.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot]).fetchone() is None:
        return False
    wait_inactive(source, slot)
    source.execute("SELECT pg_drop_replication_slot(%s)", [slot])
    return True


@dataclass
class CdcResult:
    slot: str
    published: int = 0
    tombstones: int = 0
    transactions: int = 0
    dead_letters: int = 0
    snapshot_rows: int = 0
    confirmed_lsn: str | None = None

    def as_dict(self) -> dict:
        return {"slot": self.slot, "published": self.published, "tombstones": self.tombstones,
                "transactions": self.transactions, "dead_letters": self.dead_letters,
                "snapshot_rows": self.snapshot_rows, "confirmed_lsn": self.confirmed_lsn}


@dataclass(frozen=True)
class SlotRecord:
    consistent_lsn: int
    snapshot_done: bool
    snapshot_progress: dict


class CdcState:
    """`extract_cdc_slots` over a DB-API connection to the warehouse (psycopg 2 or 3)."""

    def __init__(self, connection):
        self.connection = connection

    def _run(self, statement: str, parameters: dict, fetch: bool = False):
        try:
            with self.connection.cursor() as cursor:
                cursor.execute(statement, parameters)
                row = cursor.fetchone() if fetch else None
            self.connection.commit()
        except BaseException:
            self.connection.rollback()
            raise
        return row

    def get(self, slot: str) -> SlotRecord | None:
        row = self._run("SELECT consistent_lsn::text, snapshot_done, snapshot_progress FROM extract_cdc_slots "
                        "WHERE slot_name = %(slot)s", {"slot": slot}, fetch=True)
        if row is None:
            return None
        progress = row[2] if isinstance(row[2], dict) else json.loads(row[2])
        return SlotRecord(parse_lsn(row[0]), row[1], progress)

    def create(self, slot: str, consistent_lsn: int) -> None:
        self._run("INSERT INTO extract_cdc_slots (slot_name, consistent_lsn) VALUES (%(slot)s, %(lsn)s::pg_lsn)",
                  {"slot": slot, "lsn": format_lsn(consistent_lsn)})

    def save_progress(self, slot: str, progress: dict, done: bool = False) -> None:
        self._run("UPDATE extract_cdc_slots SET snapshot_progress = %(progress)s::jsonb, snapshot_done = %(done)s "
                  "WHERE slot_name = %(slot)s", {"slot": slot, "progress": json.dumps(progress), "done": done})

    def confirmed(self, slot: str, lsn: int) -> None:
        self._run("UPDATE extract_cdc_slots SET confirmed_lsn = %(lsn)s::pg_lsn, confirmed_at = now() "
                  "WHERE slot_name = %(slot)s", {"slot": slot, "lsn": format_lsn(lsn)})

    def forget(self, slot: str) -> None:
        self._run("DELETE FROM extract_cdc_slots WHERE slot_name = %(slot)s", {"slot": slot})


@dataclass
class _Page:
    in_flight: InFlight
    dead_letters: list[DeadLetter]
    # The position to confirm once this page and every one before it is acknowledged; None mid-transaction.
    confirm_lsn: int | None


@dataclass
class _Transaction:
    commit_lsn: int
    commit_time: dt.datetime
    index: int = 0


@dataclass
class CdcExtraction:
    """One run of the cdc extraction. `dsn` is a libpq connection string for the source database (its user needs
    REPLICATION, and to own the tables for the publication); `warehouse` a DB-API connection to the warehouse."""

    dsn: str
    warehouse: object
    publisher: KafkaPublisher
    slot: str
    publication: str
    schema: str = "public"
    page_size: int = 5000
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    entities: tuple[Entity, ...] = EXTRACTED
    _pages: deque = field(default_factory=deque)

    def __post_init__(self):
        self.state = CdcState(self.warehouse)
        self.dead_letters = ExtractState(self.warehouse)
        self.by_table = {(self.schema, e.source_table): e for e in self.entities}

    # --- the source's objects

    def _ensure_publication(self, source) -> list[Entity]:
        """Create the publication, or add the tables of entities it lacks (the registry grew); returns those."""
        def table(entity: Entity) -> str:
            return f"{quote_ident(self.schema)}.{quote_ident(entity.source_table)}"

        exists = source.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [self.publication]).fetchone()
        if not exists:
            tables = ", ".join(table(e) for e in self.entities)
            # No truncate: it names no rows, so it has no tombstones to give.
            source.execute(f"CREATE PUBLICATION {quote_ident(self.publication)} FOR TABLE {tables} "
                           "WITH (publish = 'insert, update, delete')")
            log.info("created publication %s for %s", self.publication, tables)
            return []
        published = set(source.execute("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                                       [self.publication]).fetchall())
        missing = [e for e in self.entities if (self.schema, e.source_table) not in published]
        for entity in missing:
            source.execute(f"ALTER PUBLICATION {quote_ident(self.publication)} ADD TABLE {table(entity)}")
            log.warning("added %s to publication %s; its existing rows are copied as a snapshot",
                        table(entity), self.publication)
        return missing

    def _slot_status(self, source) -> tuple | None:
        return source.execute("SELECT wal_status, confirmed_flush_lsn::text FROM pg_replication_slots "
                              "WHERE slot_name = %s", [self.slot]).fetchone()

    def drop_slot(self) -> None:
        """Drop the slot (if any) and forget it: the next run starts with a new initial snapshot."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as source:
            if drop_slot(source, self.slot):
                log.warning("dropped replication slot %s", self.slot)
        self.state.forget(self.slot)

    # --- publishing, and confirming only what the broker acknowledged

    def _encode(self, entity: Entity, rows: list[dict], to_message) -> tuple[list, list[DeadLetter]]:
        """(key, value) pairs and dead letters (a row the contract cannot encode, or too large), as the poller's."""
        messages, rejects = encode_page(entity, rows, to_message, now_utc())
        messages, oversized = split_oversized(entity, messages, self.max_payload_bytes)
        return messages, rejects + oversized

    def _send(self, messages: list, dead_letters: list[DeadLetter], confirm_lsn: int | None) -> None:
        self._pages.append(_Page(self.publisher.send(messages), dead_letters, confirm_lsn))

    def _settle(self, replication_cursor, result: CdcResult, block: bool) -> None:
        """Settle acknowledged pages in order; confirm the newest position they cover."""
        confirm = None
        while self._pages and (block or self._pages[0].in_flight.done):
            page = self._pages.popleft()
            page.in_flight.wait()
            if page.dead_letters:
                self.dead_letters.commit_page("cdc", None, page.dead_letters)
                result.dead_letters += len(page.dead_letters)
            if page.confirm_lsn is not None:
                confirm = page.confirm_lsn
        if confirm is not None and replication_cursor is not None:
            replication_cursor.send_feedback(flush_lsn=confirm, force=True)
            self.state.confirmed(self.slot, confirm)
            result.confirmed_lsn = format_lsn(confirm)

    # --- the initial snapshot

    def _copy_snapshot(self, source, record: SlotRecord, snapshot: str, consistent_lsn: int,
                       result: CdcResult) -> None:
        """Copy every row not copied yet, in keyset pages on the key, under an exported snapshot; rows carry the
        consistent point of the slot that exported it as their source position."""
        from psycopg import sql

        progress = dict(record.snapshot_progress)
        source.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            source.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            for entity in self.entities:
                if progress.get(entity.name) is True:
                    continue
                columns = ", ".join(quote_ident(name) for name in entity.field_names)
                table = f"{quote_ident(self.schema)}.{quote_ident(entity.source_table)}"
                key = quote_ident(entity.key)
                after = progress.get(entity.name)
                while True:
                    where = "" if after is None else f"WHERE {key} > %(after)s"
                    cursor = source.execute(f"SELECT {columns} FROM {table} {where} ORDER BY {key} "
                                            f"LIMIT %(limit)s", {"after": after, "limit": self.page_size})
                    names = [d.name for d in cursor.description]
                    rows = [dict(zip(names, row)) for row in cursor.fetchall()]
                    if not rows:
                        break
                    position = source_position(consistent_lsn, 0)
                    messages, rejects = self._encode(entity, rows, _with_position(position))
                    self._send(messages, rejects, None)
                    self._settle(None, result, block=True)
                    after = str(rows[-1][entity.key])
                    progress[entity.name] = after
                    self.state.save_progress(self.slot, progress)
                    result.snapshot_rows += len(rows)
                progress[entity.name] = True
                self.state.save_progress(self.slot, progress)
        finally:
            source.execute("COMMIT")
        self.state.save_progress(self.slot, progress, done=True)
        log.info("initial snapshot of slot %s: %s rows", self.slot, result.snapshot_rows)

    # --- the run

    def run(self, resnapshot: bool = False) -> CdcResult:
        import psycopg
        import psycopg2
        import psycopg2.extras

        result = CdcResult(self.slot)
        if resnapshot:
            self.drop_slot()
        with psycopg.connect(self.dsn, autocommit=True) as source:
            added = self._ensure_publication(source)
            replication = psycopg2.connect(self.dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
            try:
                cursor = replication.cursor()
                record, snapshot = self._open_slot(source, cursor)
                if added and record.snapshot_done:
                    # A table new to the publication: its rows so far were never published. Copied as a resumed
                    # snapshot is.
                    progress = {name: done for name, done in record.snapshot_progress.items()
                                if name not in {e.name for e in added}}
                    self.state.save_progress(self.slot, progress)
                    record = self.state.get(self.slot)
                if not record.snapshot_done and snapshot is not None:
                    self._copy_snapshot(source, record, snapshot, record.consistent_lsn, result)
                elif not record.snapshot_done:
                    with temporary_snapshot(self.dsn, self.slot) as (consistent_lsn, exported):
                        self._copy_snapshot(source, record, exported, consistent_lsn, result)
                wait_inactive(source, self.slot)
                run_id = uuid.uuid4().hex
                [marker] = source.execute("SELECT pg_logical_emit_message(false, %s, %s)::text",
                                          [MARKER_PREFIX, run_id]).fetchone()
                cursor.start_replication(slot_name=self.slot, decode=False, options={
                    "proto_version": "1", "publication_names": self.publication, "messages": "true"})
                self._stream(cursor, RowLoader(source), run_id, parse_lsn(marker), result)
                self._wait_confirmed(source, cursor, parse_lsn(marker))
            finally:
                replication.close()
        log.info("cdc run of slot %s: %s", self.slot, result.as_dict())
        return result

    def _open_slot(self, source, cursor) -> tuple[SlotRecord, str | None]:
        """The slot's record, creating the slot (and the snapshot it exports) when there is none."""
        status, record = self._slot_status(source), self.state.get(self.slot)
        if status is not None and status[0] == "lost":
            raise SlotLost(f"replication slot {self.slot!r} was invalidated (wal_status lost): the source removed WAL "
                           "it had not confirmed. Run the extraction with resnapshot (the DAG's `resnapshot` param) "
                           "to drop it and start over with an initial snapshot")
        if status is None and record is not None:
            raise SlotLost(f"replication slot {self.slot!r} is recorded in extract_cdc_slots but missing on the "
                           "source (dropped): changes since its last confirmation are lost. Run the extraction with "
                           "resnapshot (the DAG's `resnapshot` param) to start over with an initial snapshot")
        if status is not None:
            if record is None:
                # Created by a run killed before it recorded the slot: its snapshot is gone, copy under a new one.
                self.state.create(self.slot, parse_lsn(status[1]))
                record = self.state.get(self.slot)
            return record, None
        cursor.execute(f"CREATE_REPLICATION_SLOT {quote_ident(self.slot)} LOGICAL pgoutput EXPORT_SNAPSHOT")
        _name, consistent_point, snapshot, _plugin = cursor.fetchone()
        self.state.create(self.slot, parse_lsn(consistent_point))
        log.info("created replication slot %s at %s", self.slot, consistent_point)
        return self.state.get(self.slot), snapshot

    def _stream(self, cursor, loader: RowLoader, run_id: str, marker_lsn: int, result: CdcResult) -> None:
        decoder, encoder = PgOutputDecoder(), ChangeEncoder(loader)
        messages: list = []
        dead_letters: list[DeadLetter] = []
        transaction: _Transaction | None = None
        deadline = time.monotonic() + MARKER_TIMEOUT_S
        while True:
            message = cursor.read_message()
            if message is None:
                self._settle(cursor, result, block=False)
                if time.monotonic() > deadline:
                    raise CdcError(f"slot {self.slot!r} did not reach this run's WAL marker {format_lsn(marker_lsn)} "
                                   f"within {MARKER_TIMEOUT_S} s")
                select.select([cursor.connection], [], [], 1.0)
                continue
            event = decoder.decode(message.payload)
            if isinstance(event, Begin):
                transaction = _Transaction(event.final_lsn, event.commit_time)
            elif isinstance(event, Change):
                entity = self.by_table.get((event.relation.schema, event.relation.table))
                if entity is None:
                    raise CdcError(f"publication {self.publication!r} sent a change of "
                                   f"{event.relation.schema}.{event.relation.table}, which is no entity's source")
                position = source_position(transaction.commit_lsn, transaction.index)
                transaction.index += 1
                page, rejects = self._encode_change(entity, event, encoder, position, transaction.commit_time)
                messages += page
                dead_letters += rejects
                if event.kind == "delete":
                    result.tombstones += len(page)
                else:
                    result.published += len(page)
                if len(messages) >= self.page_size * 2:
                    # A transaction larger than a page: its pages go out, the position moves at its commit.
                    self._send(messages, dead_letters, None)
                    messages, dead_letters = [], []
            elif isinstance(event, Commit):
                result.transactions += 1
                transaction = None
                if len(messages) >= self.page_size:
                    self._send(messages, dead_letters, event.end_lsn)
                    messages, dead_letters = [], []
                    self._settle(cursor, result, block=False)
            elif isinstance(event, LogicalMessage) and event.prefix == MARKER_PREFIX:
                if event.content.decode() == run_id:
                    break
        self._send(messages, dead_letters, marker_lsn)
        self.publisher.flush()
        self._settle(cursor, result, block=True)

    def _encode_change(self, entity: Entity, change: Change, encoder: ChangeEncoder, position: str,
                       commit_time: dt.datetime) -> tuple[list, list[DeadLetter]]:
        relation, loader = change.relation, encoder.loader
        if change.kind != "delete":
            # msgspec where the message is the same (about a fifth of the CPU of the row-by-row encoder); None: the
            # row-by-row path below decides, with its dead letters and errors.
            message = encoder.encode(entity, relation, change.new, position, now_utc())
            if message is not None:
                return split_oversized(entity, [message], self.max_payload_bytes)
        if change.kind == "delete":
            old = loader.row(relation, change.old)
            tombstone = tombstone_message(entity, old[entity.key],
                                          position if entity.ordered_by_position else commit_time)
            tombstone[SOURCE_POSITION] = position
            return self._encode(entity, [tombstone], lambda _entity, message, _processado_em: message)
        row = loader.row(relation, change.new, change.old)
        unchanged = [name for name, value in row.items() if value is UNCHANGED]
        if unchanged:
            raise CdcError(_unchanged_toast_message(relation, unchanged))
        return self._encode(entity, [row], _with_position(position))

    def _wait_confirmed(self, source, cursor, lsn: int) -> None:
        """Wait until the source shows the slot confirmed at `lsn` (the walsender applies feedback as it reads it)."""
        deadline = time.monotonic() + CONFIRM_TIMEOUT_S
        while True:
            status = self._slot_status(source)
            if status is not None and status[1] is not None and parse_lsn(status[1]) >= lsn:
                return
            if time.monotonic() > deadline:
                raise CdcError(f"slot {self.slot!r} did not show the confirmation of {format_lsn(lsn)} "
                               f"within {CONFIRM_TIMEOUT_S} s")
            cursor.send_feedback(flush_lsn=lsn, force=True)
            cursor.read_message()
            time.sleep(0.05)


def _with_position(position: str):
    def to_message(entity: Entity, row: dict, processado_em: dt.datetime) -> dict:
        message = record_message(entity, row, processado_em)
        message[SOURCE_POSITION] = position
        return message
    return to_message


def _unchanged_toast_message(relation: Relation, columns: list[str]) -> str:
    return (f"an update of {relation.schema}.{relation.table} left {', '.join(columns)} out (unchanged TOASTed "
            f"values) and the table's replica identity gives no old row to take them from: run ALTER TABLE "
            f"{quote_ident(relation.schema)}.{quote_ident(relation.table)} REPLICA IDENTITY FULL")


# --- slot safety: a slot nobody reads makes the source keep WAL until its disk fills

_SOURCE_SLOTS = """
SELECT slot_name, active, wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
FROM pg_replication_slots WHERE slot_type = 'logical' AND database = current_database() ORDER BY slot_name
"""
_RECORDED_SLOTS = "SELECT slot_name, coalesce(confirmed_at, created_at) FROM extract_cdc_slots ORDER BY slot_name"


@dataclass(frozen=True)
class SlotHealth:
    slot: str
    # None: recorded by the extraction but missing on the source.
    active: bool | None
    wal_status: str | None
    retained_wal_bytes: int | None
    # Since the extraction last confirmed a position (or created the slot); None for a slot it does not own.
    confirm_age_seconds: float | None
    problems: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"slot": self.slot, "active": self.active, "wal_status": self.wal_status,
                "retained_wal_bytes": self.retained_wal_bytes, "confirm_age_seconds": self.confirm_age_seconds,
                "problems": list(self.problems)}


def evaluate_slots(source_slots: list[tuple], recorded: dict[str, dt.datetime], now: dt.datetime,
                   max_retained_wal_bytes: int, max_confirm_age_seconds: float) -> list[SlotHealth]:
    """Each logical slot of the source database (name, active, wal_status, retained bytes), and each slot the
    extraction recorded (name -> last confirmation), judged against the thresholds."""
    verdicts, seen = [], set()
    for name, active, wal_status, retained in source_slots:
        seen.add(name)
        problems = []
        if wal_status == "lost":
            problems.append(f"slot {name} was invalidated: the WAL it needed is gone (re-snapshot: the extraction "
                            "DAG's `resnapshot` param)")
        if retained is not None and retained > max_retained_wal_bytes:
            problems.append(f"slot {name} holds back {retained} bytes of WAL on the source "
                            f"(limit {max_retained_wal_bytes}, PIPELINE_EXTRACT_CDC_MAX_RETAINED_WAL_BYTES)")
        age = None
        if name in recorded:
            age = (now - recorded[name]).total_seconds()
            if age > max_confirm_age_seconds:
                problems.append(f"slot {name} was last confirmed {age:.0f} s ago "
                                f"(limit {max_confirm_age_seconds:g}, PIPELINE_EXTRACT_CDC_MAX_CONFIRM_AGE_SECONDS)")
        verdicts.append(SlotHealth(name, active, wal_status, retained, age, tuple(problems)))
    for name, confirmed_at in recorded.items():
        if name not in seen:
            verdicts.append(SlotHealth(name, None, None, None, (now - confirmed_at).total_seconds(), (
                f"slot {name} is recorded by the extraction but missing on the source (dropped): re-snapshot "
                "with the extraction DAG's `resnapshot` param",)))
    return verdicts


def observe_slots(source, warehouse, max_retained_wal_bytes: int, max_confirm_age_seconds: float
                  ) -> list[SlotHealth]:
    """The verdicts over DB-API connections (psycopg 2 or 3) to the source and the warehouse."""
    rows = []
    for connection, query in ((source, _SOURCE_SLOTS), (warehouse, _RECORDED_SLOTS)):
        try:
            with connection.cursor() as cursor:
                cursor.execute(query)
                rows.append(cursor.fetchall())
        finally:
            connection.rollback()
    source_slots, recorded = rows
    return evaluate_slots(source_slots, dict(recorded), now_utc(), max_retained_wal_bytes, max_confirm_age_seconds)
