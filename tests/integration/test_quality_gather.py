"""The data-quality gatherer against real Postgres (warehouse and Supabase stand-in schemas of the test's own),
Elasticsearch (uuid-prefixed indices) and Kafka (a uuid topic), with a checkpoint in Spark's on-disk format."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from include.entities import CHAT_SESSION, ENTITIES, LEAD
from include.orchestration.observe import es_doc_count, gather_quality_counts, heartbeat, recently_running_queries
from include.orchestration.quality import EntityCounts, LostOffsets, QualityThresholds, evaluate_quality
from include.schema import ensure_index, quote_ident


def write_checkpoint(folder, topic, offsets):
    (folder / "offsets").mkdir(parents=True)
    (folder / "commits").mkdir()
    (folder / "offsets" / "0").write_text(
        "v1\n" + json.dumps({"batchWatermarkMs": 0, "batchTimestampMs": 0, "conf": {}}) + "\n"
        + json.dumps({topic: {str(p): o for p, o in offsets.items()}}) + "\n")
    (folder / "commits" / "0").write_text('v1\n{"nextBatchWatermarkMs":0}\n')


@pytest.fixture
def warehouse(settings, pg_connect):
    return pg_connect()


def test_gathered_counts_and_verdict(settings, warehouse, pg_schema, source_schema, source_db, es, es_prefix,
                                     kafka_topic, tmp_state):
    source = quote_ident(source_schema)
    with source_db.cursor() as cursor:
        for _ in range(3):
            cursor.execute(f"INSERT INTO {source}.leads DEFAULT VALUES")
        for _ in range(2):
            cursor.execute(f"INSERT INTO {source}.chat_sessions DEFAULT VALUES")
        cursor.execute(f"SELECT id FROM {source}.leads")
        lead_ids = [str(row[0]) for row in cursor.fetchall()]
        cursor.execute(f"SELECT id FROM {source}.chat_sessions")
        session_ids = [str(row[0]) for row in cursor.fetchall()]
    source_db.commit()

    with warehouse.cursor() as cursor:
        cursor.execute(f"SET search_path TO {quote_ident(pg_schema)}")
        for lead_id in lead_ids:
            cursor.execute("INSERT INTO leads (id) VALUES (%s)", (lead_id,))
        for session_id in session_ids:
            cursor.execute("INSERT INTO chat_sessions (id) VALUES (%s)", (session_id,))
        cursor.execute("INSERT INTO dead_letters (stage, entity, reason) VALUES ('stream', 'lead', 'bad'), "
                       "('stream', 'lead', 'bad'), ('stream', NULL, 'invalid JSON'), "
                       "('stream', 'lead', 'old'), ('stream', NULL, 'validator_error: RecursionError') ")
        cursor.execute("UPDATE dead_letters SET created_at = now() - interval '2 hours' WHERE reason = 'old'")
        cursor.execute("INSERT INTO stream_heartbeats (query_name, run_id, batch_id, input_rows, recorded_at) "
                       "VALUES ('q', 'r1', 0, 5, now() - interval '30 seconds'), "
                       "('q', 'r1', 1, 0, now() - interval '20 seconds'), "
                       "('other', 'r9', 0, 1, now() - interval '3 days')")
        cursor.execute("INSERT INTO lost_offsets (topic, kafka_partition, from_offset, to_offset, reason, "
                       "previous_offset, batch_id, detected_at) VALUES ('t', 1, 5, 9, 'skipped', 4, 2, now()), "
                       "('t', 0, 0, 3, 'reset', 8, 3, now() - interval '2 hours')")
        cursor.execute("RESET search_path")
    warehouse.commit()

    for entity in ENTITIES:
        ensure_index(es, entity, index=entity.index_name(es_prefix))
    for lead_id in lead_ids:
        es.index(index=LEAD.index_name(es_prefix), id=lead_id, document={"id": lead_id})
    es.index(index=CHAT_SESSION.index_name(es_prefix), id=session_ids[0], document={"id": session_ids[0]})
    es.indices.refresh(index=f"{es_prefix}*")

    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    for partition, count in ((0, 3), (1, 2)):
        for _ in range(count):
            producer.send(kafka_topic, b"{}", partition=partition)
    producer.flush()
    producer.close()
    checkpoint = tmp_state / "q"
    write_checkpoint(checkpoint, kafka_topic, {0: 2, 1: 1, 2: 0})

    counts = gather_quality_counts(
        warehouse=warehouse, source=source_db, es=es, bootstrap=settings.kafka_bootstrap, topic=kafka_topic,
        checkpoint=checkpoint, query_name="q", window_minutes=60, warehouse_schema=pg_schema,
        index_prefix=es_prefix, source_schema=source_schema)

    assert counts.entities == (
        EntityCounts("lead", postgres_rows=3, es_docs=3, source_rows=3, dead_letters=2),
        EntityCounts("chat_session", postgres_rows=2, es_docs=1, source_rows=2, dead_letters=0),
        EntityCounts("evento", postgres_rows=0, es_docs=0, source_rows=None, dead_letters=0),
    )
    assert counts.unattributed_dead_letters == 2
    assert counts.dead_letters_by_reason == {"bad": 2, "invalid JSON": 1, "validator_error": 1}
    assert counts.validator_errors == 1
    assert 19 <= counts.heartbeat_age_seconds < 60
    assert counts.kafka_lag == 2
    assert counts.lost_offsets == (LostOffsets("t", 1, 5, 9, "skipped", 4),)  # the window leaves the older out

    report = evaluate_quality(counts, QualityThresholds(max_dead_letters=4))
    assert report.reasons[:2] == ("chat_session: Postgres has 2 rows but Elasticsearch 1 documents (gap 1 > 0.1%)",
                                  "1 dead letters with reason validator_error: the validator raised on them (a bug "
                                  "to fix, then replay them from dead_letters)")
    assert report.reasons[2].startswith("1 Kafka offset ranges never read in the last 60 min (lost_offsets): topic t "
                                        "partition 1 offsets 5-9 (5)")

    assert heartbeat(warehouse, "nobody", pg_schema).last_recorded_at is None
    assert recently_running_queries(warehouse, dt.timedelta(days=1), pg_schema) == {"q"}
    # every read ended its transaction: the session is not left idle in one
    assert warehouse.info.transaction_status.name == "IDLE"


def test_missing_index_counts_as_empty_and_missing_topic_is_an_error(settings, warehouse, pg_schema, es, es_prefix,
                                                                     tmp_state):
    assert es_doc_count(es, f"{es_prefix}_never_created") == 0
    with pytest.raises(LookupError, match="does not exist"):
        gather_quality_counts(warehouse=warehouse, source=None, es=es, bootstrap=settings.kafka_bootstrap,
                              topic=f"{es_prefix}_no_topic", checkpoint=tmp_state / "q", query_name="q",
                              window_minutes=60, warehouse_schema=pg_schema, index_prefix=es_prefix)
