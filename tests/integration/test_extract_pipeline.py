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


def extract(endpoints, **options):
    [result] = run_extraction([LEAD.name], RunOptions(**options), config=POSTGRES, endpoints=endpoints)
    return result


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
    environment = os.environ | {"PIPELINE_EXTRACT_SOURCE": "postgres"}
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


def test_a_row_committed_late_inside_the_lookback_window_is_picked_up(
        settings, source_db, source_schema, endpoints, read_topic, kafka_topic):
    from include.extract.service import connect_postgres

    leads = f"{quote_ident(source_schema)}.leads"
    with connect_postgres(settings, settings.pg_source_db) as slow:
        # Its updated_at is taken now, but nobody sees the row until the commit below.
        late_id = slow.execute(f"INSERT INTO {leads} (nome) VALUES ('Lúcia Atrasada') RETURNING id::text"
                               ).fetchone()[0]
        source_db.execute(f"INSERT INTO {leads} (nome) SELECT 'Inês ' || n FROM generate_series(1, 20) n")
        source_db.commit()
        extract(endpoints, page_size=50)
        slow.commit()

    without_lookback = extract(endpoints, page_size=50, lookback=dt.timedelta(0))
    assert without_lookback.records.published == 0, "the late row is behind the cursor: only lookback finds it"

    with_lookback = extract(endpoints, page_size=50, lookback=dt.timedelta(minutes=5))

    assert late_id in {r.key for r in records(read_topic, kafka_topic)}
    assert with_lookback.records.published == 21


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


@pytest.mark.parametrize("time_zone", ["Etc/UTC", "America/Sao_Paulo", "Asia/Kolkata"])
def test_pages_the_postgres_source_encodes_are_the_contracts_messages(source_db, source_schema, time_zone):
    from include.entities import CHAT_SESSION
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

    for entity in (LEAD, CHAT_SESSION):
        page, rows, (messages, dead_letters) = _both_ways(source, entity, processado_em)

        assert isinstance(page, EncodedPage) and dead_letters == [] and len(page.messages) == len(rows) > 250
        assert [key for key, _ in page.messages] == [key for key, _ in messages]
        for (_, encoded), (_, expected) in zip(page.messages, messages):
            assert list(json.loads(encoded).items()) == list(json.loads(expected).items())
        assert page.position == last_position(entity, rows)


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

    from include.extract.extractor import extract_entity
    from include.extract.publisher import KafkaPublisher
    from include.extract.sources import PostgresSource
    from include.extract.state import ExtractState

    generate(source_db, DemoSize(95, sessions_per_lead=0), source_schema, seed=8)
    source = psycopg2.connect(settings.pg_dsn(settings.pg_source_db))
    warehouse = psycopg2.connect(settings.pg_dsn(settings.pg_warehouse_db), options=(
        f"-c statement_timeout={settings.pg_statement_timeout_ms} -c search_path={pg_schema}"))
    options = RunOptions(page_size=10, lookback=dt.timedelta(0))
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
