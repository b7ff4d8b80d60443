"""Decoding pgoutput's messages (the formats of Postgres's "Logical Replication Message Formats"), byte for byte."""

from __future__ import annotations

import datetime as dt
import struct

import pytest

from include.extract.cdc import source_position
from include.extract.pgoutput import (UNCHANGED, Begin, Change, Commit, DecodeError, LogicalMessage,
                                      PgOutputDecoder, Relation, format_lsn, parse_lsn)

MICROS_2026 = int((dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)
                   - dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)) / dt.timedelta(microseconds=1))


def text(value: bytes) -> bytes:
    return b"t" + struct.pack("!i", len(value)) + value


def tuple_data(*values: bytes) -> bytes:
    return struct.pack("!h", len(values)) + b"".join(values)


def relation(decoder: PgOutputDecoder) -> Relation:
    payload = (b"R" + struct.pack("!I", 16385) + b"public\0leads\0" + b"f" + struct.pack("!h", 2)
               + struct.pack("!b", 1) + b"id\0" + struct.pack("!Ii", 2950, -1)
               + struct.pack("!b", 0) + b"nome\0" + struct.pack("!Ii", 25, -1))
    return decoder.decode(payload)


def test_relation_begin_and_commit():
    decoder = PgOutputDecoder()
    rel = relation(decoder)
    assert (rel.schema, rel.table, rel.replica_identity) == ("public", "leads", "f")
    assert [(c.name, c.type_oid, c.is_key) for c in rel.columns] == [("id", 2950, True), ("nome", 25, False)]
    begin = decoder.decode(b"B" + struct.pack("!QqI", 0x1_0000_00A0, MICROS_2026, 733))
    assert begin == Begin(0x1_0000_00A0, dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc), 733)
    commit = decoder.decode(b"C" + struct.pack("!bQQq", 0, 0x1_0000_00A0, 0x1_0000_00D0, MICROS_2026))
    assert isinstance(commit, Commit) and (commit.commit_lsn, commit.end_lsn) == (0x1_0000_00A0, 0x1_0000_00D0)


def test_insert_update_with_old_row_and_delete():
    decoder = PgOutputDecoder()
    rel = relation(decoder)
    oid = struct.pack("!I", 16385)
    insert = decoder.decode(b"I" + oid + b"N" + tuple_data(text(b"a-id"), b"n"))
    assert insert == Change("insert", rel, (b"a-id", None), None)
    # REPLICA IDENTITY FULL: the old row, then the new one with an unchanged TOASTed value.
    update = decoder.decode(b"U" + oid + b"O" + tuple_data(text(b"a-id"), text(b"old"))
                            + b"N" + tuple_data(text(b"a-id"), b"u"))
    assert update == Change("update", rel, (b"a-id", UNCHANGED), (b"a-id", b"old"))
    plain_update = decoder.decode(b"U" + oid + b"N" + tuple_data(text(b"a-id"), text(b"new")))
    assert plain_update.old is None and plain_update.new == (b"a-id", b"new")
    delete = decoder.decode(b"D" + oid + b"K" + tuple_data(text(b"a-id"), b"n"))
    assert delete == Change("delete", rel, None, (b"a-id", None))


def test_logical_message_and_ignored_and_unknown_types():
    decoder = PgOutputDecoder()
    message = decoder.decode(b"M" + struct.pack("!bQ", 0, 0x2A) + b"pipeline\0" + struct.pack("!i", 3) + b"run")
    assert message == LogicalMessage(0x2A, False, "pipeline", b"run")
    assert decoder.decode(b"Y" + struct.pack("!I", 1) + b"public\0t\0") is None
    with pytest.raises(DecodeError):
        decoder.decode(b"T" + struct.pack("!ib", 1, 0) + struct.pack("!I", 16385))
    relation(decoder)
    with pytest.raises(DecodeError, match="binary"):
        decoder.decode(b"I" + struct.pack("!I", 16385) + b"N" + tuple_data(b"b" + struct.pack("!i", 1) + b"x", b"n"))


def test_lsn_text_and_source_positions_sort_as_the_commit_order():
    assert format_lsn(0x16_B374D848) == "16/B374D848" and parse_lsn("16/B374D848") == 0x16_B374D848
    ordered = [(0x9_0000_0000, 0), (0x10_0000_0000, 0), (0x10_0000_0000, 1), (0x10_0000_0000, 16),
               (0x10_0000_0001, 0)]
    positions = [source_position(lsn, index) for lsn, index in ordered]
    assert sorted(positions) == positions
