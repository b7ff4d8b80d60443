"""Decoding of `pgoutput`'s messages, Postgres's built-in logical decoding output (protocol version 1).

The format is Postgres's "Logical Replication Message Formats" chapter: every message is one type byte and
big-endian fields. Only what a publication of inserts, updates and deletes sends is decoded here: Begin, Commit,
Relation, Insert, Update, Delete, and the logical messages of `pg_logical_emit_message` (option `messages`); Type
and Origin messages carry nothing the extraction uses. Column values come as text (the column's output function)
and are turned into Python values by psycopg's loaders for the column's type, the same ones that load a query's
rows, so a value decoded here equals the value a SELECT of the row returns.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass
from typing import Any

# Timestamps in the protocol: microseconds since 2000-01-01 00:00 UTC.
_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)


_INT16, _INT32 = struct.Struct("!h"), struct.Struct("!i")
_TEXT, _NULL, _UNCHANGED_TOAST = b"t"[0], b"n"[0], b"u"[0]


class DecodeError(ValueError):
    """A message this decoder does not know how to read."""


class _Unchanged:
    """A TOASTed value the update did not change: pgoutput sends no value for it."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    is_key: bool


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    table: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    commit_time: dt.datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_time: dt.datetime


@dataclass(frozen=True)
class Change:
    """`kind` is insert, update or delete. `new` is the row after an insert or update; `old` is the key (replica
    identity DEFAULT) or the whole old row (FULL) of a delete, and of an update when it has one. Values are raw
    text bytes, None for NULL, or UNCHANGED."""

    kind: str
    relation: Relation
    new: tuple | None
    old: tuple | None


@dataclass(frozen=True)
class LogicalMessage:
    lsn: int
    transactional: bool
    prefix: str
    content: bytes


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def unpack(self, fmt: str):
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return values

    def string(self) -> str:
        end = self.data.index(b"\0", self.at)
        value = self.data[self.at:end].decode("utf-8")
        self.at = end + 1
        return value

    def take(self, length: int) -> bytes:
        value = self.data[self.at:self.at + length]
        self.at += length
        return value

    def time(self) -> dt.datetime:
        (micros,) = self.unpack("!q")
        return _EPOCH + dt.timedelta(microseconds=micros)

    def tuple_data(self) -> tuple:
        # Per value of every change: indexing and precompiled structs, no method call per value.
        data, at = self.data, self.at
        (count,) = _INT16.unpack_from(data, at)
        at += 2
        values = []
        for _ in range(count):
            kind = data[at]
            at += 1
            if kind == _TEXT:
                (length,) = _INT32.unpack_from(data, at)
                at += 4
                values.append(data[at:at + length])
                at += length
            elif kind == _NULL:
                values.append(None)
            elif kind == _UNCHANGED_TOAST:
                values.append(UNCHANGED)
            else:
                raise DecodeError(f"tuple value of kind {bytes([kind])!r} (binary mode is not requested)")
        self.at = at
        return tuple(values)


class PgOutputDecoder:
    """Decodes one replication stream's messages; Relation messages are remembered for the changes after them."""

    def __init__(self):
        self.relations: dict[int, Relation] = {}

    def decode(self, payload: bytes):
        """A Begin, Commit, Relation, Change or LogicalMessage; None for message types that carry nothing used."""
        reader = _Reader(payload)
        kind = reader.take(1)
        if kind == b"B":
            (final_lsn,) = reader.unpack("!Q")
            commit_time = reader.time()
            (xid,) = reader.unpack("!I")
            return Begin(final_lsn, commit_time, xid)
        if kind == b"C":
            _flags, commit_lsn, end_lsn = reader.unpack("!bQQ")
            return Commit(commit_lsn, end_lsn, reader.time())
        if kind == b"R":
            (oid,) = reader.unpack("!I")
            schema, table = reader.string(), reader.string()
            identity, count = reader.unpack("!ch")
            columns = []
            for _ in range(count):
                (flags,) = reader.unpack("!b")
                name = reader.string()
                type_oid, _typmod = reader.unpack("!Ii")
                columns.append(Column(name, type_oid, bool(flags & 1)))
            relation = Relation(oid, schema, table, identity.decode(), tuple(columns))
            self.relations[oid] = relation
            return relation
        if kind in (b"I", b"U", b"D"):
            (oid,) = reader.unpack("!I")
            relation = self.relations[oid]
            old = new = None
            marker = reader.take(1)
            if marker in (b"K", b"O"):
                old = reader.tuple_data()
                if kind == b"U":
                    marker = reader.take(1)
            if kind != b"D":
                if marker != b"N":
                    raise DecodeError(f"expected a new tuple, found {marker!r}")
                new = reader.tuple_data()
            return Change({b"I": "insert", b"U": "update", b"D": "delete"}[kind], relation, new, old)
        if kind == b"M":
            flags, lsn = reader.unpack("!bQ")
            prefix = reader.string()
            (length,) = reader.unpack("!i")
            return LogicalMessage(lsn, bool(flags & 1), prefix, reader.take(length))
        if kind in (b"Y", b"O"):
            return None
        raise DecodeError(f"pgoutput message type {kind!r} is not expected from this publication")


class RowLoader:
    """Text values to Python values with psycopg's loaders for each type oid, as a query's rows are loaded (the
    connection's adapters: arrays, jsonb, timestamptz in its time zone, numeric as Decimal, uuid)."""

    def __init__(self, connection):
        from psycopg.pq import Format

        self._connection, self._format = connection, Format.TEXT
        self._loaders: dict[int, Any] = {}

    def type_oid(self, name: str) -> int:
        """The oid of the type `name` (as Postgres names it) in the connection's adapters."""
        return self._connection.adapters.types[name].oid

    def loader(self, type_oid: int):
        """The psycopg loader of the type: `loader(oid).load(text)` is the value a query's row holds."""
        loader = self._loaders.get(type_oid)
        if loader is None:
            loader_class = self._connection.adapters.get_loader(type_oid, self._format)
            if loader_class is None:
                raise DecodeError(f"no loader for type oid {type_oid}")
            loader = self._loaders[type_oid] = loader_class(type_oid, self._connection)
        return loader

    def row(self, relation: Relation, values: tuple, fallback: tuple | None = None) -> dict:
        """The row as {column: value}; an UNCHANGED value is taken from `fallback` (the old row) and stays
        UNCHANGED when that has none."""
        row = {}
        for index, (column, value) in enumerate(zip(relation.columns, values)):
            if value is UNCHANGED and fallback is not None:
                value = fallback[index]
            if value is None or value is UNCHANGED:
                row[column.name] = value
            else:
                row[column.name] = self.loader(column.type_oid).load(value)
        return row


def format_lsn(lsn: int) -> str:
    """An LSN as Postgres writes it: `16/B374D848`."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)
