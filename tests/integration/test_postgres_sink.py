"""The Postgres sink on the real warehouse: staged, set-based, newest-wins, tombstones, dead letters, one transaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.connections import warehouse_session
from include.contract import tombstone_message
from include.entities import CHAT_SESSION, LEAD
from include.schema import STREAM_STAGE_TABLE, quote_ident
from spark import transforms as T
from spark.sinks.postgres import PostgresSink, StagingLost, TopicRecreated
from tests.stream_support import T0, chat_message, evento_message, kafka_frame, lead_message, position

MAX_BYTES = 64 * 1024
HOUR = dt.timedelta(hours=1)


@pytest.fixture
def sink(settings, pg_schema):
    return PostgresSink(settings, pg_schema)


@pytest.fixture
def db(sink):
    connection = sink.connect(autocommit=True)
    yield connection
    connection.close()


@pytest.fixture
def write(spark, sink):
    """Validate literal messages as one batch and write them through the sink; the result also holds the rows the
    merge handed on for Elasticsearch (`actions`: kind -> ids)."""
    offsets = iter(range(0, 1_000_000, 1000))

    def run(values, batch_id=0, start_offset=None, topic_id=None):
        batch = kafka_frame(spark, values, start_offset=next(offsets) if start_offset is None else start_offset)
        handed = []

        def index(rows):
            handed.extend(rows)
            return []

        result = sink.write(batch, batch_id, T.documents_of(MAX_BYTES), index=index, topic_id=topic_id)
        actions = {}
        for kind, record_id, *_ in handed:
            actions.setdefault(kind, []).append(record_id)
        return SimpleNamespace(**dataclasses.asdict(result), actions=actions, handed=handed)

    return run


def snapshot(db, table: str) -> list[tuple]:
    return db.execute(f"SELECT * FROM {quote_ident(table)} ORDER BY id").fetchall()


def test_every_field_lands_intact(db, write):
    lead, chat, evento = lead_message(), chat_message(), evento_message()
    result = write([lead, chat, evento])
    assert result.upserted == {"lead": 1, "chat_session": 1, "evento": 1}
    assert result.dead_letters == 0

    row = db.execute("SELECT * FROM leads").fetchone()
    columns = [c.name for c in db.execute("SELECT * FROM leads LIMIT 0").description]
    stored = dict(zip(columns, row))
    assert str(stored["id"]) == lead["id"]
    for name in ("nome", "email", "telefone", "nome_empresa", "nome_projeto", "status_lead", "origem",
                 "utm_source", "utm_medium", "utm_campaign", "interesse", "score_qualificacao", "localizacao"):
        assert stored[name] == lead[name], name
    for name in ("created_at", "updated_at", "last_interaction_at", "processado_em"):
        assert stored[name] == lead[name], name  # same instant, whatever the offset it was written with
    assert stored["updated_at"].utcoffset() is not None

    chat_row = db.execute("SELECT pages_visited, perguntas_feitas, is_active, ended_at, intencao_detectada, "
                          "lead_id::text FROM chat_sessions").fetchone()
    assert chat_row == (["/", "/preços"], [], True, None, "compra à vista", chat["lead_id"])
    evento_row = db.execute("SELECT evento, valor, occurred_at, payload FROM eventos_raw").fetchone()
    assert evento_row[:3] == ("clique", 12.5, T0)
    assert evento_row[3]["id"] == evento["id"] and evento_row[3]["valor"] == 12.5


def test_replayed_and_older_batches_change_nothing_newer_ones_win(db, write):
    ids = [lead_message()["id"] for _ in range(3)]
    write([lead_message(id=i, updated_at=T0 + HOUR, nome="v1") for i in ids])
    first = snapshot(db, "leads")

    replay = write([lead_message(id=i, updated_at=T0 + HOUR, nome="v1") for i in ids])
    assert snapshot(db, "leads") == first
    assert replay.upserted["lead"] == 3  # rewritten with identical values

    older = write([lead_message(id=i, updated_at=T0, nome="v0") for i in ids])
    assert older.upserted["lead"] == 0
    assert snapshot(db, "leads") == first

    write([lead_message(id=ids[0], updated_at=T0 + 2 * HOUR, nome="v2")])
    names = dict(db.execute("SELECT id::text, nome FROM leads").fetchall())
    assert names == {ids[0]: "v2", ids[1]: "v1", ids[2]: "v1"}


def test_tombstone_deletes_and_older_updates_cannot_resurrect(db, write):
    record_id = lead_message()["id"]
    write([lead_message(id=record_id, updated_at=T0 + HOUR)])
    deleted = write([tombstone_message(LEAD, record_id, T0 + 2 * HOUR)])
    assert deleted.deleted["lead"] == 1
    assert db.execute("SELECT count(*) FROM leads").fetchone()[0] == 0
    assert db.execute("SELECT entity, id::text, deleted_at FROM deleted_records").fetchall() == [
        ("lead", record_id, T0 + 2 * HOUR)]

    for version in (T0 + HOUR, T0 + 2 * HOUR):  # older, and as old as the deletion
        replayed = write([lead_message(id=record_id, updated_at=version)])
        assert replayed.upserted["lead"] == 0
        assert replayed.actions == {}  # nor does Elasticsearch get it
        assert db.execute("SELECT count(*) FROM leads").fetchone()[0] == 0

    # An older tombstone does not move the recorded deletion back.
    write([tombstone_message(LEAD, record_id, T0)])
    assert db.execute("SELECT deleted_at FROM deleted_records").fetchone()[0] == T0 + 2 * HOUR

    recreated = write([lead_message(id=record_id, updated_at=T0 + 3 * HOUR, nome="de volta")])
    assert recreated.upserted["lead"] == 1 and recreated.actions == {"lead": [record_id]}
    assert db.execute("SELECT nome FROM leads").fetchall() == [("de volta",)]


def test_tombstone_older_than_the_row_keeps_it(db, write):
    record_id = lead_message()["id"]
    write([lead_message(id=record_id, updated_at=T0 + 2 * HOUR)])
    result = write([tombstone_message(LEAD, record_id, T0 + HOUR)])
    assert (result.dead_letters, result.deleted["lead"]) == (0, 0)
    assert db.execute("SELECT count(*) FROM leads").fetchone()[0] == 1


def test_sessions_are_ordered_by_source_position_not_by_any_clock(db, write):
    """chat_sessions has no version column: the newest change is the one latest in the source's commit order, its
    position (commit LSN, then index in the transaction); timestamps in the row play no part."""
    session_id = chat_message()["id"]
    late_clock = T0 + 100 * HOUR
    write([chat_message(id=session_id, source_position=position(0x2000, 1), total_messages=2, started_at=T0)])
    older = write([chat_message(id=session_id, source_position=position(0x2000, 0), total_messages=1,
                                started_at=late_clock)])  # earlier in the same transaction, whatever its clock
    assert older.upserted["chat_session"] == 0
    older = write([chat_message(id=session_id, source_position=position(0x1FFF, 9), total_messages=0)])
    assert older.upserted["chat_session"] == 0
    assert db.execute("SELECT total_messages, source_position FROM chat_sessions").fetchall() == [
        (2, position(0x2000, 1))]

    stale = write([tombstone_message(CHAT_SESSION, session_id, position(0x1000))])
    assert (stale.dead_letters, stale.deleted["chat_session"]) == (0, 0)
    deleted = write([tombstone_message(CHAT_SESSION, session_id, position(0x3000))])
    assert deleted.deleted["chat_session"] == 1
    assert db.execute("SELECT entity, id::text, deleted_at, deleted_position FROM deleted_records").fetchall() == [
        ("chat_session", session_id, None, position(0x3000))]
    replayed = write([chat_message(id=session_id, source_position=position(0x2000, 1))])
    assert (replayed.upserted["chat_session"], replayed.actions) == (0, {})  # nor does Elasticsearch get it
    recreated = write([chat_message(id=session_id, source_position=position(0x3000, 1), total_messages=7)])
    assert recreated.actions == {"chat_session": [session_id]}
    assert db.execute("SELECT total_messages FROM chat_sessions").fetchall() == [(7,)]


def test_dead_letters_land_once_per_offset(db, write):
    bad = [dict(lead_message(), score_qualificacao="alto"), "{not json", dict(evento_message(), tipo_evento="x")]
    values = [lead_message()] + bad
    first = write(values, batch_id=3, start_offset=100)
    assert first.dead_letters == 3
    rows = db.execute("SELECT stage, entity, reason, topic, kafka_partition, kafka_offset, batch_id "
                      "FROM dead_letters ORDER BY kafka_offset").fetchall()
    assert rows == [
        ("stream", "lead", "wrong_type: score_qualificacao", "eventos", 0, 101, 3),
        ("stream", None, "invalid_json", "eventos", 0, 102, 3),
        ("stream", None, "unknown_tipo_evento", "eventos", 0, 103, 3),
    ]
    raw = db.execute("SELECT raw_payload FROM dead_letters WHERE kafka_offset = 101").fetchone()[0]
    assert json.loads(raw)["score_qualificacao"] == "alto"

    replay = write(values, batch_id=4, start_offset=100)
    assert replay.dead_letters == 0
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 3


def test_staging_is_cleared_including_rows_of_dead_attempts(db, write):
    stale = lead_message()
    db.execute(f"INSERT INTO {quote_ident(STREAM_STAGE_TABLE)} (stage_token, task_partition, kind, id, version, "
               "deleted, kafka_timestamp, kafka_topic, kafka_partition, kafka_offset, doc, staged_at) "
               "VALUES (gen_random_uuid(), 0, 'lead', %s, now(), false, now(), 'eventos', 0, 0, "
               "jsonb_build_object('id', %s::text, 'updated_at', now())::text, now() - interval '2 hours')",
               [stale["id"], stale["id"]])
    write([lead_message(), "nope"])
    assert db.execute(f"SELECT count(*) FROM {quote_ident(STREAM_STAGE_TABLE)}").fetchone()[0] == 0
    # The dead attempt's row was swept, never merged.
    assert db.execute("SELECT count(*) FROM leads WHERE id = %s", [stale["id"]]).fetchone()[0] == 0


def test_a_failing_merge_rolls_back_the_whole_batch(db, write):
    db.execute("DROP TABLE eventos_raw")  # the last entity's merge will fail
    with pytest.raises(Exception, match="eventos_raw"):
        write([lead_message(), chat_message(), evento_message()])
    assert db.execute("SELECT count(*) FROM leads").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM chat_sessions").fetchone()[0] == 0


@pytest.mark.parametrize("loss", ["TRUNCATE {stage}", "DELETE FROM {stage} WHERE kafka_offset > 0"])
def test_a_batch_whose_staged_rows_vanished_before_the_merge_commits_nothing(db, sink, write, monkeypatch, loss):
    # Crash recovery empties an UNLOGGED table: between the tasks' COPY and the merge, as a Postgres restart would.
    stage = sink.stage

    def stage_then_lose(batch, token, documents):
        staged = stage(batch, token, documents)
        db.execute(loss.format(stage=quote_ident(STREAM_STAGE_TABLE)))
        return staged

    monkeypatch.setattr(sink, "stage", stage_then_lose)
    values = [lead_message(), chat_message(), "{not json"]
    with pytest.raises(StagingLost, match="tasks staged"):
        write(values, batch_id=1, start_offset=0)
    for table in ("leads", "chat_sessions", "dead_letters", "stream_offsets", "lost_offsets"):
        assert db.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchone()[0] == 0, table

    monkeypatch.setattr(sink, "stage", stage)
    replay = write(values, batch_id=1, start_offset=0)
    assert (replay.upserted["lead"], replay.upserted["chat_session"], replay.dead_letters) == (1, 1, 1)


def test_the_offset_ledger_records_skipped_and_reset_offsets_once(db, write):
    def ledger():
        return db.execute("SELECT kafka_partition, last_offset, batch_id FROM stream_offsets").fetchall()

    def lost():
        return db.execute("SELECT kafka_partition, from_offset, to_offset, reason, previous_offset, batch_id "
                          "FROM lost_offsets ORDER BY id").fetchall()

    write([lead_message() for _ in range(3)], batch_id=0, start_offset=0)  # offsets 0..2
    write([lead_message() for _ in range(2)], batch_id=1, start_offset=3)  # 3..4: contiguous
    assert (ledger(), lost()) == ([(0, 4, 1)], [])
    write([lead_message() for _ in range(2)], batch_id=2, start_offset=10)  # 5..9 deleted before they were read
    assert (ledger(), lost()) == ([(0, 11, 2)], [(0, 5, 9, "skipped", 4, 2)])
    write([lead_message() for _ in range(2)], batch_id=2, start_offset=10)  # the same batch replayed: no gap
    write([lead_message() for _ in range(3)], batch_id=1, start_offset=3)  # an older one: the ledger stays
    assert (ledger(), lost()) == ([(0, 11, 2)], [(0, 5, 9, "skipped", 4, 2)])
    write([lead_message() for _ in range(2)], batch_id=3, start_offset=2)  # offsets restarted: topic recreated
    assert (ledger(), lost()[1:]) == ([(0, 3, 3)], [(0, 0, 1, "reset", 11, 3)])


def test_a_topic_recreated_under_the_same_name_is_a_reset_even_past_the_old_offsets(db, write):
    def lost():
        return db.execute("SELECT kafka_partition, from_offset, to_offset, reason, previous_offset "
                          "FROM lost_offsets ORDER BY id").fetchall()

    write([lead_message() for _ in range(3)], batch_id=0, start_offset=0, topic_id=lambda: "old")
    write([lead_message() for _ in range(2)], batch_id=1, start_offset=3, topic_id=lambda: "old")
    assert lost() == []
    # The new topic grew past offset 4 before the job read it: offsets look contiguous, the topic id does not.
    write([lead_message() for _ in range(2)], batch_id=2, start_offset=5, topic_id=lambda: "new")
    assert lost() == [(0, 0, 4, "reset", 4)]
    write([lead_message() for _ in range(2)], batch_id=2, start_offset=5, topic_id=lambda: "new")  # a replay
    assert lost() == [(0, 0, 4, "reset", 4)]
    assert db.execute("SELECT last_offset, topic_id FROM stream_offsets").fetchall() == [(6, "new")]

    # Recreated while a batch was staged: which topic its records came from is unknown, so it fails.
    before = snapshot(db, "leads")
    ids = iter(["new", "newer"])
    with pytest.raises(TopicRecreated):
        write([lead_message()], batch_id=3, start_offset=7, topic_id=lambda: next(ids))
    assert snapshot(db, "leads") == before
    assert db.execute("SELECT last_offset, topic_id FROM stream_offsets").fetchall() == [(6, "new")]

    # Read from its start on a new checkpoint (batch ids from 0 again): a reset that skipped nothing, and the ledger
    # follows the new checkpoint's batches, so a later gap is found.
    write([lead_message() for _ in range(2)], batch_id=0, start_offset=0, topic_id=lambda: "newest")
    write([lead_message() for _ in range(2)], batch_id=1, start_offset=4, topic_id=lambda: "newest")
    assert lost()[1:] == [(0, 0, -1, "reset", 6), (0, 2, 3, "skipped", 1)]


def test_every_session_carries_the_statement_timeout(spark, sink, settings):
    check = (f"SELECT current_setting('statement_timeout')::interval = "
             f"interval '{settings.pg_statement_timeout_ms} milliseconds' AS timeout_set, current_schema() AS schema")
    with sink.connect() as connection:
        assert connection.execute(check).fetchone() == (True, sink.schema)
    # The executors' staging sessions, from a Python worker.
    schema = sink.schema

    def executor_session(batches):
        import pyarrow as pa

        for _ in batches:
            with warehouse_session(settings, schema) as connection:
                timeout_set, current = connection.execute(check).fetchone()
            yield pa.RecordBatch.from_pydict({"timeout_set": [timeout_set], "schema": [current]})

    row = spark.range(1).mapInArrow(executor_session, "timeout_set boolean, schema string").collect()[0]
    assert (row["timeout_set"], row["schema"]) == (True, sink.schema)


def test_the_newest_version_per_id_wins_within_a_batch(db, write):
    a, b, c = (lead_message()["id"] for _ in range(3))
    hours = [T0 + n * HOUR for n in range(4)]
    result = write([
        lead_message(id=a, updated_at=hours[2], nome="a2"),
        lead_message(id=a, updated_at=hours[3], nome="a3"),   # newest, arrives before an older one
        lead_message(id=a, updated_at=hours[1], nome="a1"),
        lead_message(id=b, updated_at=hours[1], nome="b1"),
        tombstone_message(LEAD, b, hours[2]),                 # deletion newer than b's update
        lead_message(id=b, updated_at=hours[0], nome="b0"),
        lead_message(id=c, updated_at=hours[1], nome="c-first"),
        tombstone_message(LEAD, c, hours[1]),                 # same version: the tombstone wins
        lead_message(id=c, updated_at=hours[1], nome="c-last"),
    ])
    assert db.execute("SELECT id::text, nome, updated_at FROM leads").fetchall() == [(a, "a3", hours[3])]
    assert dict(db.execute("SELECT id::text, deleted_at FROM deleted_records").fetchall()) == {b: hours[2],
                                                                                             c: hours[1]}
    assert sorted(result.actions["lead"]) == sorted([a, b, c])  # one per id: a's update, b's and c's deletions


# A session's changes: (LSN, index in its transaction, a tombstone?); positions are unique, as in the WAL. Indexes
# reach past 65,535, where the Elasticsearch version stops counting them.
changes = st.lists(st.tuples(st.integers(1, 40), st.sampled_from([0, 1, 2, 65_535, 65_536, 70_000]), st.booleans()),
                   min_size=1, max_size=7, unique_by=lambda change: change[:2])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=changes, data=st.data())
def test_any_order_and_batching_of_a_sessions_changes_ends_at_its_latest_position(db, write, changes, data):
    """Whatever order the changes arrive in (replays, a resent batch) and however they are cut into batches, the
    warehouse ends at the change latest in commit order (absent when that is a deletion), and every row handed to
    Elasticsearch carries that change's external version: LSN << 16 plus its index, at most 65,535."""
    session_id = chat_message()["id"]
    messages = [tombstone_message(CHAT_SESSION, session_id, position(lsn, index)) if deleted else
                chat_message(id=session_id, source_position=position(lsn, index), total_messages=n)
                for n, (lsn, index, deleted) in enumerate(changes)]
    arrival = data.draw(st.permutations(messages))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(arrival) - 1)), max_size=2)))
    for start, end in zip([0, *cuts], [*cuts, len(arrival)]):
        result = write(arrival[start:end])
        assert result.dead_letters == 0
        for kind, record_id, version, deleted, document in result.handed:
            lsn, index = (int(part, 16) for part in json.loads(document)["source_position"].split("/"))
            assert version == (lsn << 16) + min(index, 65_535)

    latest = max(messages, key=lambda message: message["source_position"])
    stored = db.execute("SELECT total_messages, source_position FROM chat_sessions WHERE id = %s",
                        [session_id]).fetchall()
    assert stored == ([] if latest.get("deleted") else [(latest["total_messages"], latest["source_position"])])


def test_equal_versions_keep_the_later_kafka_record(db, write):
    record_id = lead_message()["id"]
    write([lead_message(id=record_id, nome="first"), lead_message(id=record_id, nome="second")])
    assert db.execute("SELECT nome FROM leads").fetchall() == [("second",)]


def test_a_stale_staging_table_of_the_old_shape_is_replaced(db, settings, pg_schema):
    from include.schema import apply_sql, warehouse_ddl

    db.execute(f"DROP TABLE {quote_ident(STREAM_STAGE_TABLE)}")
    db.execute(f"CREATE UNLOGGED TABLE {quote_ident(STREAM_STAGE_TABLE)} (stage_token uuid, kind text, deleted "
               "boolean, doc jsonb, staged_at timestamptz)")
    with warehouse_session(settings, pg_schema) as connection:
        apply_sql(connection, warehouse_ddl())
    columns = {row[0] for row in db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
        [pg_schema, STREAM_STAGE_TABLE]).fetchall()}
    assert {"task_partition", "id", "version", "kafka_timestamp", "kafka_topic", "kafka_partition", "kafka_offset"} <= columns
