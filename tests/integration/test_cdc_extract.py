"""The cdc extraction on the real Postgres (the Supabase stand-in, wal_level=logical) and Kafka.

Every test owns a uuid-named source schema, warehouse schema, topic, publication and replication slot; the slot and
the publication are dropped afterwards.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time

import pytest

from include.connections import pg_session
from include.entities import LEAD
from include.extract.cdc import SlotLost, drop_slot
from include.extract.config import ExtractConfig
from include.extract.extractor import RunOptions, extract_entity
from include.extract.service import run_cdc
from include.schema import quote_ident

CDC = ExtractConfig(source="cdc")


def cdc(cdc_settings, endpoints, **kwargs):
    return run_cdc(settings=cdc_settings, config=CDC, endpoints=endpoints, **kwargs)


def latest(read_topic, topic) -> dict[str, dict]:
    """Each key's newest cdc message on the topic by source position (what a newest-wins sink ends with)."""
    newest: dict[str, dict] = {}
    for record in read_topic(topic):
        if "source_position" not in record.value:
            continue
        held = newest.get(record.key)
        if held is None or record.value["source_position"] >= held["source_position"]:
            newest[record.key] = record.value
    return newest


def source_names(source_db, schema) -> dict[str, str]:
    rows = source_db.execute(f"SELECT id::text, nome FROM {quote_ident(schema)}.leads").fetchall()
    source_db.commit()
    return dict(rows)


def test_a_transaction_committing_after_the_lookback_is_missed_by_the_poller_and_published_by_cdc(
        settings, cdc_settings, restricted_source_db, source_db, source_schema, pg_schema, kafka_topic,
        endpoints, read_topic):
    """The poller's documented limit (a role that cannot see other sessions' transaction starts, as hosted
    Supabase's, or the REST source): a row stamped before the lookback window and committed after the cursor
    passed it is never read. The WAL has it at its commit."""
    from include.extract.publisher import KafkaPublisher
    from include.extract.sources import PostgresSource
    from include.extract.state import ExtractState

    leads = f"{quote_ident(source_schema)}.leads"
    late_id = source_db.execute(f"INSERT INTO {leads} (nome) VALUES ('Lúcia') RETURNING id::text").fetchone()[0]
    source_db.commit()
    lookback = dt.timedelta(seconds=1)
    with pg_session(settings, settings.pg_warehouse_db, pg_schema) as warehouse, \
            KafkaPublisher(settings.kafka_bootstrap, kafka_topic) as publisher:
        def poll():
            options = RunOptions(page_size=50, lookback=lookback, safety_margin=dt.timedelta(0))
            return extract_entity(LEAD, PostgresSource(restricted_source_db, source_schema),
                                  ExtractState(warehouse), publisher, options).records

        assert poll().published == 1
        assert cdc(cdc_settings, endpoints).snapshot_rows == 1
        with pg_session(settings, settings.pg_source_db) as slow:
            # updated_at is stamped now, by the trigger; nobody sees the update until the commit below.
            slow.execute(f"UPDATE {leads} SET nome = 'Lúcia Atrasada' WHERE id = %s", [late_id])
            time.sleep(lookback.total_seconds() * 1.5)
            source_db.execute(f"INSERT INTO {leads} (nome) VALUES ('Inês')")
            source_db.commit()
            assert not poll().cursor_held, "the poller moved its cursor past the open transaction's row"
            slow.commit()
        poll()
        polled_names = {r.value["nome"] for r in read_topic(kafka_topic) if r.key == late_id}
        assert polled_names == {"Lúcia"}, "the late update is behind the cursor and outside the lookback"

        result = cdc(cdc_settings, endpoints)

    assert result.published == 2 and result.transactions == 2
    published = [r.value for r in read_topic(kafka_topic) if r.key == late_id]
    assert published[-1]["nome"] == "Lúcia Atrasada"
    assert latest(read_topic, kafka_topic)[late_id]["nome"] == "Lúcia Atrasada"


def test_deletes_are_tombstones_with_no_trigger_and_no_deleted_records_table(
        cdc_settings, source_db, source_schema, endpoints, read_topic, kafka_topic):
    schema = quote_ident(source_schema)
    source_db.execute(f"DROP TABLE {schema}.deleted_records")
    source_db.execute(f"DROP FUNCTION {schema}.pipeline_capture_delete() CASCADE")
    source_db.execute(f"INSERT INTO {schema}.leads (nome) SELECT 'Ana ' || n FROM generate_series(1, 10) n")
    source_db.commit()
    assert cdc(cdc_settings, endpoints).snapshot_rows == 10
    deleted = [row[0] for row in source_db.execute(
        f"DELETE FROM {schema}.leads WHERE nome IN ('Ana 2', 'Ana 5', 'Ana 7') RETURNING id::text").fetchall()]
    [(commit_time,)] = source_db.execute("SELECT clock_timestamp()").fetchall()
    source_db.commit()
    assert source_db.execute("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                             "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
                             "AND t.tgname LIKE '%%delete%%'", [source_schema]).fetchone()[0] == 0

    result = cdc(cdc_settings, endpoints)

    assert result.tombstones == 3 and result.published == 0 and result.transactions == 1
    tombstones = [r for r in read_topic(kafka_topic) if r.value.get("deleted")]
    assert sorted(r.key for r in tombstones) == sorted(deleted)
    positions = sorted(r.value["source_position"] for r in tombstones)
    # One transaction: one commit LSN, the changes' indexes 0, 1, 2.
    assert len({p.split("/")[0] for p in positions}) == 1 and [p.split("/")[1] for p in positions] == [
        "00000000", "00000001", "00000002"]
    for record in tombstones:
        deleted_at = dt.datetime.fromisoformat(record.value["updated_at"])
        assert abs(deleted_at - commit_time) < dt.timedelta(seconds=5) and record.value["tipo_evento"] == "lead"
    assert set(latest(read_topic, kafka_topic)) == set(source_names(source_db, source_schema)) | set(deleted)


def test_a_dropped_slot_stops_the_run_until_a_resnapshot(cdc_settings, source_db, source_schema, endpoints,
                                                         read_topic, kafka_topic):
    leads = f"{quote_ident(source_schema)}.leads"
    source_db.execute(f"INSERT INTO {leads} (nome) SELECT 'Bia ' || n FROM generate_series(1, 5) n")
    source_db.commit()
    cdc(cdc_settings, endpoints)
    drop_slot(source_db, cdc_settings.extract_cdc_slot)
    source_db.commit()
    source_db.execute(f"UPDATE {leads} SET nome = 'lost' WHERE nome = 'Bia 1'")
    source_db.commit()

    with pytest.raises(SlotLost, match="missing on the source.*resnapshot"):
        cdc(cdc_settings, endpoints)
    with pytest.raises(SlotLost):
        cdc(cdc_settings, endpoints)
    again = cdc(cdc_settings, endpoints, resnapshot=True)

    assert again.snapshot_rows == 5
    assert sorted(v["nome"] for v in latest(read_topic, kafka_topic).values()) == ["Bia 2", "Bia 3", "Bia 4",
                                                                                     "Bia 5", "lost"]


def test_the_slot_check_fires_when_the_extraction_stops_and_clears_when_it_catches_up(
        settings, cdc_settings, source_db, source_schema, endpoints, warehouse_db):
    from include.extract.cdc import observe_slots

    def mine():
        [slot] = [s for s in observe_slots(source_db, warehouse_db, 256 * 1024, 2)
                  if s.slot == cdc_settings.extract_cdc_slot]
        return slot

    leads = f"{quote_ident(source_schema)}.leads"
    cdc(cdc_settings, endpoints)
    assert mine().problems == () and mine().active is False
    # The extraction stops; the source goes on writing.
    source_db.execute(f"INSERT INTO {leads} (nome, interesse) "
                      "SELECT 'Caio ' || n, array_fill('interesse'::text, ARRAY[20]) FROM generate_series(1, 3000) n")
    source_db.commit()
    time.sleep(2.5)
    stopped = mine()
    assert stopped.retained_wal_bytes > 256 * 1024 and stopped.confirm_age_seconds > 2
    assert any("holds back" in p for p in stopped.problems) and any("last confirmed" in p for p in stopped.problems)

    # Caught up: the slot's restart point moves at the first running-transactions record after the confirmation,
    # which a checkpoint writes at once.
    cdc(cdc_settings, endpoints)
    source_db.execute("CHECKPOINT")
    source_db.commit()
    cdc(cdc_settings, endpoints)
    assert mine().problems == ()
    drop_slot(source_db, cdc_settings.extract_cdc_slot)
    source_db.commit()
    assert "missing on the source" in mine().problems[0] and mine().active is None


def test_an_entity_new_to_the_publication_has_its_existing_rows_copied(
        cdc_settings, source_db, source_schema, endpoints, read_topic, kafka_topic):
    """The registry grew (here: the publication lost a table): the table joins the publication and its rows so far
    are copied, instead of its changes silently starting from now."""
    sessions = f"{quote_ident(source_schema)}.chat_sessions"
    cdc(cdc_settings, endpoints)
    source_db.execute(f"ALTER PUBLICATION {quote_ident(source_schema)} DROP TABLE {sessions}")
    source_db.execute(f"INSERT INTO {sessions} (session_token) SELECT 'tok' || n FROM generate_series(1, 4) n")
    source_db.commit()

    result = cdc(cdc_settings, endpoints)
    source_db.execute(f"UPDATE {sessions} SET session_token = 'tok1b' WHERE session_token = 'tok1'")
    source_db.commit()
    after = cdc(cdc_settings, endpoints)

    assert result.snapshot_rows == 4 and after.published == 1
    tokens = sorted(v["session_token"] for v in latest(read_topic, kafka_topic).values())
    assert tokens == ["tok1b", "tok2", "tok3", "tok4"]


def test_the_watchdogs_slot_task_fails_naming_a_slot_over_its_limit(settings, cdc_settings, source_schema,
                                                                       endpoints, pg_schema, monkeypatch):
    """The task body of stream_watchdog's check_slots, through the Airflow connections as the DAG uses them."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.extract.airflow_tasks import check_slots_task

    cdc(cdc_settings, endpoints)
    connections = settings.airflow_connections()
    monkeypatch.setenv("AIRFLOW_CONN_SUPABASE_POSTGRES", connections["AIRFLOW_CONN_SUPABASE_POSTGRES"])
    # The warehouse connection, scoped to the test's schema (which holds the slot's record).
    warehouse = json.loads(connections["AIRFLOW_CONN_WAREHOUSE_POSTGRES"])
    warehouse["extra"]["options"] += f" -c search_path={pg_schema}"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_POSTGRES", json.dumps(warehouse))
    monkeypatch.setenv("PIPELINE_EXTRACT_CDC_MAX_CONFIRM_AGE_SECONDS", "1")
    time.sleep(1.5)

    with pytest.raises(AirflowFailException, match=f"slot {source_schema} was last confirmed"):
        check_slots_task()


def test_a_resumed_snapshot_dates_its_rows_after_every_change_they_hold(
        cdc_settings, source_db, source_schema, endpoints, warehouse_db, read_topic, kafka_topic):
    """A copy resumed after a kill reads rows as they are now, while the slot still replays the changes since its
    own start. Dated at the slot's start, a copied session would lose to those older replays until the newest came
    through (a row stepping back); dated at its temporary slot's consistent point, it is after every change it
    holds, and before every change it lacks."""
    sessions = f"{quote_ident(source_schema)}.chat_sessions"
    source_db.execute(f"INSERT INTO {sessions} (session_token, total_messages) VALUES ('resumed', 0)")
    source_db.commit()
    cdc(cdc_settings, endpoints)  # the slot, its first snapshot and a confirmed position
    source_db.execute(f"UPDATE {sessions} SET total_messages = 1 WHERE session_token = 'resumed'")
    source_db.commit()
    source_db.execute(f"UPDATE {sessions} SET total_messages = 2 WHERE session_token = 'resumed'")
    source_db.commit()
    # As a run killed mid-snapshot leaves it: the copy not done, the slot behind changes the copy will read.
    warehouse_db.execute("UPDATE extract_cdc_slots SET snapshot_done = false, snapshot_progress = '{}' "
                         "WHERE slot_name = %s", [cdc_settings.extract_cdc_slot])
    before = {(r.partition, r.offset) for r in read_topic(kafka_topic)}

    result = cdc(cdc_settings, endpoints)

    messages = [r.value for r in read_topic(kafka_topic) if (r.partition, r.offset) not in before]
    assert result.snapshot_rows == 1 and result.published == 2
    copied = next(m for m in messages if m["total_messages"] == 2 and m["source_position"].endswith("/00000000")
                  and m["source_position"] == max(v["source_position"] for v in messages))
    streamed = sorted((m["source_position"], m["total_messages"]) for m in messages if m is not copied)
    assert [count for _, count in streamed] == [1, 2]
    assert all(position < copied["source_position"] for position, _ in streamed)
    assert source_db.execute("SELECT count(*) FROM pg_replication_slots WHERE temporary").fetchone() == (0,)
    source_db.commit()


def test_sessions_without_updated_at_reach_both_sinks_newest_by_source_position(
        settings, spark, es, es_prefix, cdc_settings, source_db, source_schema, pg_schema, warehouse_db, endpoints,
        read_topic, kafka_topic):
    """The user's chat_sessions shape (no updated_at, no trigger, no deleted_records) through cdc, Kafka and the
    job's own foreachBatch into Postgres and Elasticsearch: delivered in any order and batching, both sinks end equal
    to the source, ordered by source position (a session's clocks play no part). The reconciler, which has no
    version to compare on the source, compares content: zero drift, then a changed warehouse row is found and
    repaired through a re-published row dated at the source's WAL position."""
    from include.contract import MAX_PAYLOAD_BYTES
    from include.entities import CHAT_SESSION
    from include.reconcile.service import run_entity
    from include.schema import ensure_index
    from spark.sinks.batch import MicroBatchSink
    from spark.sinks.elastic import ElasticsearchSink
    from spark.sinks.postgres import PostgresSink
    from spark.transforms import documents_of
    from tests.stream_support import kafka_frame

    sessions = f"{quote_ident(source_schema)}.chat_sessions"
    assert source_db.execute("SELECT count(*) FROM information_schema.columns WHERE table_schema = %s AND "
                             "table_name = 'chat_sessions' AND column_name = 'updated_at'", [source_schema]
                             ).fetchone() == (0,)
    assert source_db.execute(f"SELECT count(*) FROM pg_trigger WHERE tgrelid = '{sessions}'::regclass").fetchone() \
        == (0,)
    source_db.execute(f"INSERT INTO {sessions} (session_token, total_messages, pages_visited, started_at, is_active) "
                      "SELECT 'tok' || n, n, ARRAY['/', '/p' || n], now() - n * interval '1 hour', n % 2 = 0 "
                      "FROM generate_series(1, 30) n")
    source_db.commit()
    index = ensure_index(es, CHAT_SESSION, CHAT_SESSION.index_name(es_prefix))
    cdc(cdc_settings, endpoints)  # the initial snapshot
    tokens = dict(source_db.execute(f"SELECT session_token, id::text FROM {sessions}").fetchall())
    # One transaction changes a session twice; another dates a session's clocks far back while it is the newest
    # change; one deletes; a new session is inserted, then changed.
    source_db.execute(f"UPDATE {sessions} SET total_messages = 100 WHERE session_token = 'tok1'")
    source_db.execute(f"UPDATE {sessions} SET total_messages = 101 WHERE session_token = 'tok1'")
    source_db.commit()
    source_db.execute(f"UPDATE {sessions} SET started_at = '1971-01-01Z', ended_at = '1971-01-01Z', "
                      "is_active = false WHERE session_token = 'tok2'")
    source_db.commit()
    source_db.execute(f"DELETE FROM {sessions} WHERE session_token = 'tok3'")
    source_db.execute(f"INSERT INTO {sessions} (session_token, total_messages) VALUES ('tok31', 1)")
    source_db.commit()
    source_db.execute(f"UPDATE {sessions} SET total_messages = 2, perguntas_feitas = '{{\"Aceita Pix?\"}}' "
                      "WHERE session_token = 'tok31'")
    source_db.commit()
    cdc(cdc_settings, endpoints)

    published = [r.value for r in read_topic(kafka_topic)]
    assert all("updated_at" not in value for value in published)
    random.Random(15).shuffle(published)
    sink = MicroBatchSink(PostgresSink(settings, pg_schema), ElasticsearchSink(settings.es_url, index_prefix=es_prefix),
                          documents_of(MAX_PAYLOAD_BYTES))
    third = len(published) // 3 + 1
    for batch_id, start in enumerate(range(0, len(published), third)):
        sink.write(kafka_frame(spark, published[start:start + third], start_offset=start), batch_id)
    es.indices.refresh(index=index)

    columns = ", ".join(quote_ident(name) for name in CHAT_SESSION.field_names)
    source_rows = source_db.execute(f"SELECT {columns} FROM {sessions} ORDER BY id").fetchall()
    source_db.commit()
    assert warehouse_db.execute(f"SELECT {columns} FROM chat_sessions ORDER BY id").fetchall() == source_rows
    assert len(source_rows) == 30 and tokens["tok3"] not in {str(row[0]) for row in source_rows}
    documents = {hit["_id"]: hit["_source"] for hit in es.search(index=index, size=100)["hits"]["hits"]}
    assert {i: d["total_messages"] for i, d in documents.items()} == {str(r[0]): r[5] for r in source_rows}
    positions = dict(warehouse_db.execute("SELECT id::text, source_position FROM chat_sessions").fetchall())
    # Changed after the snapshot, though its clocks went back: its position is later than a snapshot row's.
    assert positions[tokens["tok2"]] > positions[tokens["tok5"]]

    def reconcile(publisher=None):
        return run_entity(CHAT_SESSION, warehouse=warehouse_db, es=es, source=source_db, publisher=publisher,
                          dry_run=publisher is None, warehouse_schema=pg_schema, source_schema=source_schema,
                          index_prefix=es_prefix, max_payload_bytes=MAX_PAYLOAD_BYTES)

    assert reconcile()["drift"] == 0
    warehouse_db.execute("UPDATE chat_sessions SET total_messages = 999 WHERE id = %s", [tokens["tok4"]])
    warehouse_db.commit()
    dry = reconcile()
    assert [(store["store"], store["different"], store["drift"]) for store in dry["stores"]] == [
        ("postgres", 1, 1), ("elasticsearch", 0, 0)]
    from include.extract.publisher import KafkaPublisher

    before = {(r.partition, r.offset) for r in read_topic(kafka_topic)}
    with KafkaPublisher(settings.kafka_bootstrap, kafka_topic, client_id="pytest-reconcile") as publisher:
        assert reconcile(publisher)["republished"] == {"records": 1, "refused": 0}
    republished = [r.value for r in read_topic(kafka_topic) if (r.partition, r.offset) not in before]
    assert [value["id"] for value in republished] == [tokens["tok4"]]
    sink.write(kafka_frame(spark, republished, start_offset=len(before)), 3)
    es.indices.refresh(index=index)
    assert reconcile()["drift"] == 0
    assert warehouse_db.execute("SELECT total_messages FROM chat_sessions WHERE id = %s", [tokens["tok4"]]
                                ).fetchone() == (4,)
