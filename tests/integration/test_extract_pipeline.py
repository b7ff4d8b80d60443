"""The extraction on the real Postgres (Supabase stand-in) and Kafka: the issue's "done when" list.

Every test owns a uuid-named source schema, warehouse schema and topic (see conftest.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest

from include.entities import LEAD
from include.extract.config import ExtractConfig
from include.extract.demo_data import DemoSize, activity, generate
from include.extract.extractor import RunOptions
from include.extract.publisher import BrokerUnavailable
from include.extract.service import (Endpoints, get_supabase_stats, inject_event, run_extraction,
                                     sync_leads_to_kafka)
from include.extract.sources import Position
from include.schema import quote_ident
from include.settings import REPO_ROOT

POSTGRES = ExtractConfig(source="postgres")
# The tests' rows are committed before each run starts, so a run reads right up to the source's clock;
# test_the_safety_margin_leaves_the_newest_versions_to_the_next_run sets a margin of its own.
NO_SAFETY_MARGIN = {"safety_margin": dt.timedelta(0)}


def extract(endpoints, **options):
    [result] = run_extraction([LEAD.name], RunOptions(**NO_SAFETY_MARGIN | options), config=POSTGRES,
                              endpoints=endpoints)
    return result


def extract_dead_letters(warehouse_db) -> list[tuple[str, dict]]:
    rows = warehouse_db.execute("SELECT reason, raw_payload FROM dead_letters WHERE stage = 'extract' "
                                "AND entity = 'lead' ORDER BY id").fetchall()
    return [(reason, json.loads(payload)) for reason, payload in rows]


def source_leads(source_db, schema) -> list[tuple[dt.datetime, str]]:
    rows = source_db.execute(
        f"SELECT updated_at, id::text FROM {quote_ident(schema)}.leads ORDER BY updated_at, id").fetchall()
    source_db.commit()
    return rows


def cursor(warehouse_db, name="lead") -> Position | None:
    row = warehouse_db.execute("SELECT cursor_updated_at, cursor_id FROM extract_cursors WHERE entity = %s",
                               [name]).fetchone()
    return row and Position(row[0], str(row[1]))


def records(read_topic, topic, after: set | None = None):
    """The topic's record (not tombstone) messages, or only those not among the (partition, offset)s `after`."""
    return [r for r in read_topic(topic)
            if not r.value.get("deleted") and (after is None or (r.partition, r.offset) not in after)]


def offsets(read_topic, topic) -> set[tuple[int, int]]:
    return {(r.partition, r.offset) for r in read_topic(topic)}


def test_25k_leads_sharing_one_updated_at_arrive_once_each(settings, source_db, source_schema, endpoints,
                                                           warehouse_db, read_topic, kafka_topic):
    generate(source_db, DemoSize(25_000, sessions_per_lead=0, shared_updated_at=6_000), source_schema, seed=1)
    leads = source_leads(source_db, source_schema)
    assert Counter(updated_at for updated_at, _ in leads).most_common(1)[0][1] == 6_000

    result = extract(endpoints, page_size=900)

    published = records(read_topic, kafka_topic)
    ids = [r.key for r in published]
    assert result.records.pages == 28 and result.records.published == 25_000
    assert len(ids) == len(set(ids)) == 25_000
    assert set(ids) == {record_id for _, record_id in leads}
    assert all(r.value["id"] == r.key and r.value["tipo_evento"] == "lead" for r in published)
    assert cursor(warehouse_db) == Position(*leads[-1])


def test_killed_mid_run_then_rerun_loses_nothing(settings, source_db, source_schema, pg_schema, kafka_topic,
                                                 endpoints, warehouse_db, read_topic):
    generate(source_db, DemoSize(25_000, sessions_per_lead=0, shared_updated_at=3_000), source_schema, seed=2)
    leads = source_leads(source_db, source_schema)
    command = [sys.executable, "-m", "include.extract", "run", "--entity", "lead", "--page-size", "250",
               "--lookback-seconds", "0", "--source-schema", source_schema, "--warehouse-schema", pg_schema,
               "--topic", kafka_topic]
    environment = os.environ | {"PIPELINE_EXTRACT_SOURCE": "postgres", "PIPELINE_EXTRACT_SAFETY_MARGIN_SECONDS": "0"}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while cursor(warehouse_db) is None and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        # A few pages into the run, with later pages sent and partly acknowledged but not settled.
        time.sleep(0.3)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]

    killed_at = cursor(warehouse_db)
    assert killed_at is not None and killed_at < Position(*leads[-1]), "the run finished before the kill"
    on_kafka = {r.key for r in records(read_topic, kafka_topic)}
    behind_cursor = {record_id for updated_at, record_id in leads if Position(updated_at, record_id) <= killed_at}
    assert behind_cursor <= on_kafka, "the cursor passed rows that were never acknowledged"

    extract(endpoints, page_size=250, lookback=dt.timedelta(0))

    assert {r.key for r in records(read_topic, kafka_topic)} == {record_id for _, record_id in leads}
    assert cursor(warehouse_db) == Position(*leads[-1])


def test_rows_updated_after_a_run_are_picked_up_by_the_next(source_db, source_schema, endpoints, warehouse_db,
                                                            read_topic, kafka_topic):
    generate(source_db, DemoSize(400, sessions_per_lead=0), source_schema, seed=3)
    extract(endpoints, page_size=100)
    first_run = offsets(read_topic, kafka_topic)
    before = {record_id: updated_at for updated_at, record_id in source_leads(source_db, source_schema)}

    changed = activity(source_db, source_schema, update_share=0.25, delete=0, insert=7, seed=3)
    after = {record_id: updated_at for updated_at, record_id in source_leads(source_db, source_schema)}
    moved = {record_id for record_id, updated_at in after.items() if before.get(record_id) != updated_at}
    assert len(moved) == changed["updated_leads"] + 7 and changed["updated_leads"] > 50

    second = extract(endpoints, page_size=100, lookback=dt.timedelta(0))

    published = records(read_topic, kafka_topic, after=first_run)
    assert second.records.published == len(moved) == len(published)
    assert {r.key for r in published} == moved
    assert all(dt.datetime.fromisoformat(r.value["updated_at"]) == after[r.key] for r in published)


def test_a_source_hiding_open_transactions_falls_back_to_the_lookback(
        settings, restricted_source_db, source_db, source_schema, pg_schema, kafka_topic, read_topic, caplog):
    """Without the right to see when other roles' transactions began, the cursor is not held back: a row
    committed late is found by the lookback only, and the run says so."""
    from include.extract.extractor import extract_entity
    from include.extract.publisher import KafkaPublisher
    from include.connections import pg_session
    from include.extract.sources import PostgresSource
    from include.extract.state import ExtractState

    leads = f"{quote_ident(source_schema)}.leads"
    with pg_session(settings, settings.pg_warehouse_db, pg_schema) as warehouse, \
            KafkaPublisher(settings.kafka_bootstrap, kafka_topic) as publisher:
        def run(lookback: dt.timedelta):
            options = RunOptions(page_size=50, lookback=lookback, **NO_SAFETY_MARGIN)
            return extract_entity(LEAD, PostgresSource(restricted_source_db, source_schema),
                                  ExtractState(warehouse), publisher, options).records

        with pg_session(settings, settings.pg_source_db) as slow:
            # Its updated_at is taken now, but nobody sees the row until the commit below.
            late_id = slow.execute(f"INSERT INTO {leads} (nome) VALUES ('Lúcia Atrasada') RETURNING id::text"
                                   ).fetchone()[0]
            source_db.execute(f"INSERT INTO {leads} (nome) SELECT 'Inês ' || n FROM generate_series(1, 20) n")
            source_db.commit()
            with caplog.at_level("WARNING", logger="include.extract.extractor"):
                while_open = run(dt.timedelta(0))
            slow.commit()

        without_lookback = run(dt.timedelta(0))
        with_lookback = run(dt.timedelta(minutes=5))

    assert "does not show when its open write transactions began" in caplog.text
    assert while_open.published == 20 and not while_open.cursor_held
    assert without_lookback.published == 0, "the late row is behind the cursor: only the lookback finds it"
    assert late_id in {r.key for r in records(read_topic, kafka_topic)}
    assert with_lookback.published == 21


def test_a_deleted_row_produces_exactly_one_tombstone(source_db, source_schema, endpoints, warehouse_db,
                                                      read_topic, kafka_topic):
    generate(source_db, DemoSize(200, sessions_per_lead=0), source_schema, seed=4)
    extract(endpoints, page_size=64)
    [(gone,)] = source_db.execute(
        f"DELETE FROM {quote_ident(source_schema)}.leads WHERE id = (SELECT id FROM "
        f"{quote_ident(source_schema)}.leads ORDER BY id LIMIT 1) RETURNING id::text").fetchall()
    source_db.commit()
    [(deleted_at,)] = source_db.execute(
        f"SELECT deleted_at FROM {quote_ident(source_schema)}.deleted_records WHERE id = %s", [gone]).fetchall()
    source_db.commit()

    extract(endpoints, page_size=64)
    extract(endpoints, page_size=64, lookback=dt.timedelta(0))

    tombstones = [r for r in read_topic(kafka_topic) if r.value.get("deleted")]
    assert [(t.key, t.value["deleted"], t.value["tipo_evento"]) for t in tombstones] == [(gone, True, "lead")]
    assert dt.datetime.fromisoformat(tombstones[0].value["updated_at"]) == deleted_at
    assert cursor(warehouse_db, "lead:deleted") == Position(deleted_at, gone)


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_broker_that_is_down_fails_clearly_and_leaves_the_cursor(source_db, source_schema, endpoints,
                                                                   warehouse_db):
    generate(source_db, DemoSize(30, sessions_per_lead=0), source_schema, seed=5)
    extract(endpoints)
    before = cursor(warehouse_db)
    activity(source_db, source_schema, update_share=1.0, delete=0, insert=0, seed=5)
    down = Endpoints(endpoints.source_schema, endpoints.warehouse_schema, endpoints.topic,
                     bootstrap=f"127.0.0.1:{_unused_port()}")

    with pytest.raises(BrokerUnavailable, match=r"Kafka broker at 127\.0\.0\.1:\d+ is unreachable"):
        extract(down)

    assert before is not None and cursor(warehouse_db) == before


def test_bad_source_rows_go_to_dead_letters_once_and_the_page_goes_on(source_db, source_schema, endpoints,
                                                                      warehouse_db, read_topic, kafka_topic):
    leads = f"{quote_ident(source_schema)}.leads"
    # Schema drift on the Supabase side: ids no longer enforced, a score that can be NaN, a naive timestamp.
    source_db.execute(f"ALTER TABLE {leads} DROP CONSTRAINT leads_pkey, ALTER COLUMN id DROP NOT NULL, "
                      "ALTER COLUMN score_qualificacao TYPE numeric, ALTER COLUMN last_interaction_at TYPE timestamp")
    source_db.execute(f"INSERT INTO {leads} (id, nome) VALUES (NULL, 'Sem Id')")
    source_db.execute(f"INSERT INTO {leads} (nome, score_qualificacao) VALUES ('Nota NaN', 'NaN')")
    source_db.execute(f"INSERT INTO {leads} (nome, last_interaction_at) VALUES ('Sem Fuso', '2025-01-01 10:00')")
    source_db.execute(f"INSERT INTO {leads} (nome, score_qualificacao) SELECT 'Válido ' || n, n "
                      "FROM generate_series(1, 10) n")
    source_db.commit()

    first = extract(endpoints, page_size=5)
    second = extract(endpoints, page_size=5, lookback=dt.timedelta(minutes=5))

    assert first.records.published == 10 and first.records.dead_letters == 3
    assert second.records.dead_letters == 3, "the lookback re-reads the bad rows"
    letters = warehouse_db.execute(
        "SELECT reason, raw_payload::jsonb ->> 'nome' FROM dead_letters WHERE stage = 'extract' AND entity = 'lead'"
        " ORDER BY 2").fetchall()
    assert [nome for _, nome in letters] == ["Nota NaN", "Sem Fuso", "Sem Id"], "recorded once each"
    reasons = dict((nome, reason) for reason, nome in letters)
    assert reasons["Sem Id"] == "missing id"
    assert reasons["Nota NaN"].startswith("unserialisable value: non-finite number")
    assert reasons["Sem Fuso"].startswith("unserialisable value: timestamp without time zone")
    assert len({r.key for r in records(read_topic, kafka_topic)}) == 10


def _both_ways(source, entity, processado_em):
    """The page as the source encodes it, and as the row-by-row path encodes the same rows."""
    from include.contract import record_message
    from include.extract.extractor import encode_page

    page = source.read_change_messages(entity, None, 10_000, processado_em)
    rows = source.read_changes(entity, None, 10_000)
    return page, rows, encode_page(entity, rows, record_message, processado_em)


def test_the_poller_refuses_a_table_without_a_version_column_naming_the_setting(source_db, source_schema):
    """chat_sessions, as the user defines it, has no updated_at: the poller could not see its changes, so it says so
    instead of publishing a first copy and then nothing."""
    from include.entities import CHAT_SESSION
    from include.extract.extractor import extract_entity
    from include.extract.sources import PostgresSource
    from include.settings import SettingsError

    with pytest.raises(SettingsError, match="chat_session.*PIPELINE_EXTRACT_SOURCE=cdc"):
        extract_entity(CHAT_SESSION, PostgresSource(source_db, source_schema), state=None, publisher=None)


@pytest.mark.parametrize("time_zone", ["Etc/UTC", "America/Sao_Paulo", "Asia/Kolkata"])
def test_pages_the_postgres_source_encodes_are_the_contracts_messages(source_db, source_schema, time_zone):
    from include.extract.extractor import last_position
    from include.extract.sources import EncodedPage, PostgresSource

    generate(source_db, DemoSize(300, sessions_per_lead=1.0), source_schema, seed=9)
    leads = f"{quote_ident(source_schema)}.leads"
    # Values whose JSON form is easy to get wrong: escapes, empty and NULL-holding arrays, nested jsonb, a whole
    # second, a NULL in every optional column.
    source_db.execute(
        f"INSERT INTO {leads} (nome, email, localizacao, interesse, score_qualificacao, created_at, "
        "last_interaction_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        ['Zé "Aspas" \\ Barra\nLinha\tTab\u0001 😀', "", json.dumps(
            {"lat": -2.53, "n": 10, "big": 12345678901234567890, "tiny": 1e-7, "x": [1.5, None, True, {"ç": "ã"}]}),
         [], 0, dt.datetime(2025, 3, 1, 12, 30, 15, tzinfo=dt.timezone.utc),
         dt.datetime(2025, 3, 1, 12, 30, 15, 1, tzinfo=dt.timezone.utc)])
    source_db.execute(f"INSERT INTO {leads} (nome, interesse) VALUES (NULL, ARRAY['a', NULL, 'b'])")
    source_db.commit()
    source = PostgresSource(source_db, source_schema)
    source_db.execute("SELECT set_config('TimeZone', %s, false)", [time_zone])
    source_db.commit()
    processado_em = dt.datetime(2025, 3, 1, 12, 30, 15, 250000, tzinfo=dt.timezone.utc)

    page, rows, (messages, dead_letters) = _both_ways(source, LEAD, processado_em)

    assert isinstance(page, EncodedPage) and dead_letters == [] and len(page.messages) == len(rows) > 250
    assert [key for key, _ in page.messages] == [key for key, _ in messages]
    for (_, encoded), (_, expected) in zip(page.messages, messages):
        assert list(json.loads(encoded).items()) == list(json.loads(expected).items())
    assert page.position == last_position(LEAD, rows)


def test_rows_the_encoded_query_cannot_write_as_the_contract_send_the_page_row_by_row(source_db, source_schema):
    from include.extract.sources import PostgresSource

    leads = f"{quote_ident(source_schema)}.leads"
    source_db.execute(f"INSERT INTO {leads} (nome) SELECT 'Válido ' || n FROM generate_series(1, 5) n")
    source_db.commit()
    source = PostgresSource(source_db, source_schema)
    now = dt.datetime.now(dt.timezone.utc)
    # A time before 1973, when some zone's offset still had seconds, and a jsonb number too large for a float.
    for column, value in [("created_at", "1950-06-01 00:00:00+00"), ("localizacao", '{"n": %s.5}' % ("1" * 310))]:
        source_db.execute(f"UPDATE {leads} SET {quote_ident(column)} = %s WHERE nome = 'Válido 3'", [value])
        source_db.commit()

        page, rows, (messages, dead_letters) = _both_ways(source, LEAD, now)

        assert page == rows and len(rows) == 5
        if column == "localizacao":
            assert len(messages) == 4 and dead_letters[0].reason.startswith(
                "unserialisable value: Out of range float values")
        else:
            published = {message["nome"]: message for message in (json.loads(value) for _, value in messages)}
            assert len(published) == 5 and published["Válido 3"]["created_at"] == "1950-06-01T00:00:00+00:00"
        source_db.execute(f"UPDATE {leads} SET {quote_ident(column)} = NULL")
        source_db.commit()


def test_backfill_republishes_from_a_timestamp_without_moving_the_cursor_back(
        source_db, source_schema, endpoints, warehouse_db, read_topic, kafka_topic):
    generate(source_db, DemoSize(300, sessions_per_lead=0), source_schema, seed=6)
    extract(endpoints, page_size=100)
    first_run = offsets(read_topic, kafka_topic)
    end = cursor(warehouse_db)
    leads = source_leads(source_db, source_schema)
    since = leads[200][0]

    result = extract(endpoints, page_size=100, from_timestamp=since)

    expected = {record_id for updated_at, record_id in leads if updated_at >= since}
    assert result.records.published == len(expected)
    assert {r.key for r in records(read_topic, kafka_topic, after=first_run)} == expected
    assert cursor(warehouse_db) == end


def test_parity_functions(settings, source_db, source_schema, endpoints, read_topic, kafka_topic):
    generate(source_db, DemoSize(120, sessions_per_lead=1.0), source_schema, seed=7)
    expected_sessions = source_db.execute(
        f"SELECT count(*) FROM {quote_ident(source_schema)}.chat_sessions").fetchone()[0]
    source_db.commit()

    recent = source_db.execute(f"SELECT count(*) FROM {quote_ident(source_schema)}.leads "
                               "WHERE updated_at >= now() - interval '24 hours'").fetchone()[0]
    source_db.commit()
    stats = get_supabase_stats(config=POSTGRES, endpoints=endpoints)
    synced = sync_leads_to_kafka(limit=50, hours_ago=24 * 365, config=POSTGRES, endpoints=endpoints)
    event = inject_event("clique_whatsapp", 12.5, "joao.silva@gmail.com", endpoints=endpoints)

    assert stats["total_leads"] == 120 and stats["total_chat_sessions"] == expected_sessions
    assert stats["leads_updated_last_24h"] == recent
    assert synced["status"] == "success" and synced["total_processed"] == 50 and synced["dead_letters"] == 0
    on_topic = read_topic(kafka_topic)
    assert Counter(r.value["tipo_evento"] for r in on_topic) == {"lead": 50, "evento": 1}
    [published_event] = [r for r in on_topic if r.value["tipo_evento"] == "evento"]
    assert published_event.key == event["id"] and published_event.value == event
    assert event["valor"] == 12.5 and event["usuario"] == "joao.silva@gmail.com" and event["occurred_at"]


def test_psycopg2_connections_as_airflows_postgres_hook_gives_them(settings, source_db, source_schema, pg_schema,
                                                                    kafka_topic, read_topic):
    import psycopg2

    from include.connections import set_schema
    from include.extract.extractor import extract_entity
    from include.extract.publisher import KafkaPublisher
    from include.extract.sources import PostgresSource
    from include.extract.state import ExtractState

    generate(source_db, DemoSize(95, sessions_per_lead=0), source_schema, seed=8)
    source = psycopg2.connect(settings.pg_dsn(settings.pg_source_db))
    warehouse = psycopg2.connect(settings.pg_dsn(settings.pg_warehouse_db))
    set_schema(warehouse, pg_schema)
    options = RunOptions(page_size=10, lookback=dt.timedelta(0), **NO_SAFETY_MARGIN)
    try:
        with KafkaPublisher(settings.kafka_bootstrap, kafka_topic) as publisher:
            first = extract_entity(LEAD, PostgresSource(source, source_schema), ExtractState(warehouse), publisher,
                                   options)
            activity(source_db, source_schema, update_share=0.2, delete=2, insert=0, seed=8)
            second = extract_entity(LEAD, PostgresSource(source, source_schema), ExtractState(warehouse),
                                    publisher, options)
    finally:
        source.close()
        warehouse.close()

    assert first.records.pages == 10 and first.records.published == 95
    assert second.records.published > 5 and second.deletions.published == 2
    assert len({r.key for r in read_topic(kafka_topic)}) == 95


def test_a_row_dated_in_the_future_is_a_dead_letter_and_blocks_no_later_change(
        source_db, source_schema, endpoints, warehouse_db, read_topic, kafka_topic):
    """Issue 14, point 1: a client may write any updated_at on INSERT (the trigger stamps only UPDATEs)."""
    leads = f"{quote_ident(source_schema)}.leads"
    generate(source_db, DemoSize(20, sessions_per_lead=0), source_schema, seed=10)
    [(far,)] = source_db.execute(f"INSERT INTO {leads} (nome, updated_at) VALUES ('Futuro', '2099-01-01T00:00Z') "
                                 "RETURNING id::text").fetchall()
    # Ahead of the source's clock by more than the allowed skew now, behind it a few seconds from now.
    [(soon, soon_version)] = source_db.execute(
        f"INSERT INTO {leads} (nome, updated_at) VALUES ('Logo', clock_timestamp() + interval '3 seconds') "
        "RETURNING id::text, updated_at").fetchall()
    source_db.commit()
    skew = dt.timedelta(seconds=1)

    first = extract(endpoints, page_size=8, allowed_skew=skew)
    [(changed,)] = source_db.execute(f"UPDATE {leads} SET nome = 'Mudou' WHERE id = (SELECT id FROM {leads} "
                                     "WHERE nome NOT IN ('Futuro', 'Logo') ORDER BY id LIMIT 1) RETURNING id::text"
                                     ).fetchall()
    [(new,)] = source_db.execute(f"INSERT INTO {leads} (nome) VALUES ('Novo') RETURNING id::text").fetchall()
    source_db.commit()
    first_run = offsets(read_topic, kafka_topic)
    second = extract(endpoints, page_size=8, lookback=dt.timedelta(0), allowed_skew=skew)

    assert {r.key: r.value["nome"] for r in records(read_topic, kafka_topic, after=first_run)} == {
        changed: "Mudou", new: "Novo"}, "an update and an insert after the future-dated row were published"
    assert first.records.published == 20 and first.records.dead_letters == 2
    assert second.records.published == 2 and cursor(warehouse_db).version < soon_version
    letters = extract_dead_letters(warehouse_db)
    assert [(reason.split(":")[0], payload["id"]) for reason, payload in letters] == [
        ("version_in_future", soon), ("version_in_future", far)], "recorded once each, re-checked every run"
    assert dt.datetime.fromisoformat(letters[1][1]["updated_at"]) == dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc)

    time.sleep(max((soon_version - dt.datetime.now(dt.timezone.utc)).total_seconds(), 0) + 0.5)
    caught_up = extract(endpoints, page_size=8, lookback=dt.timedelta(0), allowed_skew=skew)

    assert [r.key for r in records(read_topic, kafka_topic) if r.value["nome"] == "Logo"] == [soon]
    assert caught_up.records.published == 1 and far not in {r.key for r in records(read_topic, kafka_topic)}
    assert cursor(warehouse_db).version == soon_version


def test_a_transaction_committing_later_than_the_lookback_is_still_published(
        settings, source_db, source_schema, endpoints, warehouse_db, read_topic, kafka_topic):
    """Issue 14, point 2: rows are stamped when written, visible when committed; the lookback is 2 s here and
    the slow transaction commits about 3 s after a later update was committed and extracted."""
    from include.connections import pg_session

    leads = f"{quote_ident(source_schema)}.leads"
    [(slow_id,), (fast_id,)] = source_db.execute(
        f"INSERT INTO {leads} (nome) VALUES ('Lenta'), ('Rápida') RETURNING id::text").fetchall()
    source_db.commit()
    lookback = dt.timedelta(seconds=2)
    extract(endpoints, lookback=lookback)
    first_run = offsets(read_topic, kafka_topic)

    with pg_session(settings, settings.pg_source_db) as slow:
        [(slow_version,)] = slow.execute(f"UPDATE {leads} SET nome = 'Lenta, depois' WHERE id = %s "
                                         "RETURNING updated_at", [slow_id]).fetchall()
        time.sleep(lookback.total_seconds() + 1)
        source_db.execute(f"UPDATE {leads} SET nome = 'Rápida, depois' WHERE id = %s", [fast_id])
        source_db.commit()
        while_open = extract(endpoints, lookback=lookback)
        slow.commit()
    after_commit = extract(endpoints, lookback=lookback)

    published = {(r.key, r.value["nome"]) for r in records(read_topic, kafka_topic, after=first_run)}
    assert (slow_id, "Lenta, depois") in published and (fast_id, "Rápida, depois") in published
    assert while_open.records.cursor_held, "the open transaction held the cursor back"
    assert while_open.records.cursor.version < slow_version
    assert not after_commit.records.cursor_held


def test_an_oversized_row_is_a_dead_letter_and_the_entity_moves_on(
        source_db, source_schema, endpoints, warehouse_db, read_topic, kafka_topic):
    """Issue 14, point 3: one row above the broker's message.max.bytes (1 MiB by default), one between the
    streaming job's payload limit (256 KiB) and the broker's."""
    leads = f"{quote_ident(source_schema)}.leads"
    source_db.execute(f"INSERT INTO {leads} (nome) SELECT 'Antes ' || n FROM generate_series(1, 5) n")
    source_db.commit()
    [(huge,)] = source_db.execute(f"INSERT INTO {leads} (nome) VALUES (repeat('x', 1200000)) RETURNING id::text"
                                  ).fetchall()
    source_db.commit()
    [(large,)] = source_db.execute(f"INSERT INTO {leads} (nome) VALUES (repeat('y', 300000)) RETURNING id::text"
                                   ).fetchall()
    source_db.execute(f"INSERT INTO {leads} (nome) SELECT 'Depois ' || n FROM generate_series(1, 5) n")
    source_db.commit()

    first = extract(endpoints, page_size=4)
    second = extract(endpoints, page_size=4, lookback=dt.timedelta(minutes=5))

    on_topic = records(read_topic, kafka_topic)
    assert {r.value["nome"] for r in on_topic} == {f"{when} {n}" for when in ("Antes", "Depois") for n in range(1, 6)}
    assert first.records.published == 10 and first.records.dead_letters == 2
    assert cursor(warehouse_db) == Position(*source_leads(source_db, source_schema)[-1]), "the cursor passed them"
    assert second.records.dead_letters == 2
    letters = {payload["id"]: (reason, payload) for reason, payload in extract_dead_letters(warehouse_db)}
    assert letters.keys() == {huge, large}, "recorded once each"
    for record_id, size in ((huge, 1_200_000), (large, 300_000)):
        reason, payload = letters[record_id]
        assert reason.startswith("payload_too_large") and size < payload["bytes"] < size + 1000
        assert payload["updated_at"] is not None


def test_the_topics_own_message_limit_is_respected_below_the_payload_limit(
        settings, source_db, source_schema, endpoints, warehouse_db, read_topic, kafka_topic):
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="pytest")
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, kafka_topic,
                                            configs={"max.message.bytes": "100000"})])
    finally:
        admin.close()
    leads = f"{quote_ident(source_schema)}.leads"
    [(big,)] = source_db.execute(f"INSERT INTO {leads} (nome) VALUES (repeat('z', 150000)) RETURNING id::text"
                                 ).fetchall()
    source_db.execute(f"INSERT INTO {leads} (nome) VALUES ('Pequeno')")
    source_db.commit()

    result = extract(endpoints)

    assert [r.value["nome"] for r in records(read_topic, kafka_topic)] == ["Pequeno"]
    [(reason, payload)] = extract_dead_letters(warehouse_db)
    assert payload["id"] == big and reason.startswith("payload_too_large") and reason.endswith(
        f"the limit is {100_000 - 512 - 36}")
    assert result.records.published == 1 and result.records.cursor is not None


def test_the_safety_margin_leaves_the_newest_versions_to_the_next_run(source_db, source_schema, endpoints,
                                                                      warehouse_db, read_topic, kafka_topic):
    leads = f"{quote_ident(source_schema)}.leads"
    source_db.execute(f"INSERT INTO {leads} (nome) SELECT 'Recente ' || n FROM generate_series(1, 5) n")
    source_db.commit()
    margin = dt.timedelta(seconds=1.5)

    too_soon = extract(endpoints, safety_margin=margin)
    time.sleep(margin.total_seconds())
    later = extract(endpoints, safety_margin=margin)

    assert too_soon.records.published == 0 and too_soon.records.cursor is None
    assert later.records.published == 5 and len(records(read_topic, kafka_topic)) == 5
    assert cursor(warehouse_db) == Position(*source_leads(source_db, source_schema)[-1])
