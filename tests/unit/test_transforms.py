"""The streaming job's pure transforms on tiny literal DataFrames shaped like the Kafka source."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid

import pytest

from include.contract import encode, tombstone_message
from include.entities import CHAT_SESSION, ENTITIES, EVENTO, LEAD
from spark import transforms as T
from tests.stream_support import (KAFKA_SCHEMA, T0, UTC, chat_message, evento_message, kafka_frame, lead_message,
                                  poison_catalog, with_members)

MAX_BYTES = 4096


@pytest.fixture(scope="module")
def validation(spark):
    # Built once: building the validation expressions costs seconds of JVM calls.
    return T.with_validation(MAX_BYTES)


@pytest.fixture
def validate(spark, validation):
    """Validate literal values as one batch; cached, as the job does, so each test plans the validation once."""
    cached = []

    def run(values, **position):
        cached.append(kafka_frame(spark, values, **position).transform(validation).cache())
        return cached[-1]

    yield run
    for frame in cached:
        frame.unpersist()


@pytest.fixture
def reasons(validate):
    def run(values):
        return [row[T.REASON] for row in validate(values).orderBy("offset").collect()]

    return run


def test_valid_messages_are_routed_with_every_field_intact(validate):
    lead, chat, evento = lead_message(), chat_message(), evento_message()
    checked = validate([lead, chat, evento])
    assert [r[T.OUTCOME] for r in checked.orderBy("offset").collect()] == ["lead", "chat_session", "evento"]
    assert checked.where(T.REASON + " IS NOT NULL").count() == 0

    got = checked.transform(T.filter_entity(LEAD)).collect()
    assert len(got) == 1
    row = got[0].asDict()
    assert row["id"] == lead["id"]
    assert row["nome"] == "João Conceição" and row["nome_empresa"] == "Ação & Cia"
    assert row["interesse"] == ["imóveis", "crédito"]
    assert json.loads(row["localizacao"]) == lead["localizacao"]
    assert row["score_qualificacao"] == 87
    # The session time zone is UTC: -03:00 becomes +3 hours, microseconds kept.
    assert row["updated_at"] == dt.datetime(2024, 5, 1, 15, 0, 0, 123456)
    assert row["processado_em"] == dt.datetime(2024, 5, 1, 15, 0, 0, 123456)
    assert row["deleted"] is False

    chat_row = checked.transform(T.filter_entity(CHAT_SESSION)).collect()[0].asDict()
    assert chat_row["pages_visited"] == ["/", "/preços"] and chat_row["perguntas_feitas"] == []
    assert chat_row["is_active"] is True and chat_row["ended_at"] is None and chat_row["total_messages"] == 12

    evento_row = checked.transform(T.filter_entity(EVENTO)).collect()[0].asDict()
    assert evento_row["valor"] == decimal.Decimal("12.500000000")
    assert json.loads(evento_row["payload"])["evento"] == "clique"
    assert set(evento_row) == {c.name for c in EVENTO.columns} | {"deleted", *T.KAFKA_META}


def test_uuid_is_normalised_to_lower_case_and_unknown_fields_are_ignored(validate):
    upper = str(uuid.uuid4()).upper()
    message = dict(lead_message(id=upper), campo_novo="ignored")
    row = validate([message]).transform(T.filter_entity(LEAD)).collect()[0]
    assert row["id"] == upper.lower()


def test_iso_timestamps_with_any_offset_parse_to_the_same_instant(validate):
    timestamps = ["2024-05-01T15:00:00Z", "2024-05-01T15:00:00+00:00", "2024-05-01 12:00:00-03",
                  "2024-05-01T18:00:00+0300", "2024-05-01T15:00:00.000000+00:00"]
    messages = [dict(lead_message(), updated_at=timestamp) for timestamp in timestamps]
    rows = validate(messages).transform(T.filter_entity(LEAD)).collect()
    assert [row["updated_at"] for row in rows] == [dt.datetime(2024, 5, 1, 15, 0, 0)] * len(timestamps)


REJECTS = poison_catalog(MAX_BYTES)


def test_each_reject_kind_has_its_reason(reasons):
    # One batch holds every case (one Spark job instead of one per case); a failure shows each case's name.
    got = reasons([value for _, value, _ in REJECTS])
    assert dict(zip([name for name, _, _ in REJECTS], got)) == {name: reason for name, _, reason in REJECTS}


def test_rejects_do_not_taint_valid_rows_and_every_row_gets_one_outcome(validate):
    values = [value for _, value, _ in REJECTS] + [lead_message(), chat_message(), evento_message()]
    checked = validate(values)
    outcomes = {row[T.OUTCOME]: row["count"] for row in checked.groupBy(T.OUTCOME).count().collect()}
    assert outcomes == {T.REJECTED: len(REJECTS), "lead": 1, "chat_session": 1, "evento": 1}
    for entity in ENTITIES:
        assert checked.transform(T.filter_entity(entity)).count() == 1


def test_a_row_of_nulls_is_an_invalid_json_reject(spark, validation):
    frame = spark.createDataFrame([(None, None, None, None, None, None)], KAFKA_SCHEMA)
    checked = frame.transform(validation)
    row = checked.collect()[0]
    assert (row[T.REASON], row[T.OUTCOME]) == (T.INVALID_JSON, T.REJECTED)
    assert checked.transform(T.to_dead_letters(0)).collect()[0]["raw_payload"] is None


def test_escaped_backslash_before_u0000_is_not_a_nul(reasons):
    message = dict(lead_message(), localizacao={"path": "C:\\u0000"})
    assert reasons([message]) == [None]


def test_tombstone_needs_only_key_and_version(validate):
    record_id = str(uuid.uuid4())
    tombstone = tombstone_message(LEAD, record_id, T0, processado_em=T0)
    no_version = with_members(tombstone, updated_at=None)
    checked = validate([tombstone, no_version])
    assert [r[T.REASON] for r in checked.orderBy("offset").collect()] == [None, f"{T.MISSING_REQUIRED}: updated_at"]
    row = checked.transform(T.filter_entity(LEAD)).collect()[0]
    assert (row["id"], row["deleted"], row["nome"]) == (record_id, True, None)


def test_dead_letters_carry_reason_raw_payload_and_kafka_position(validate):
    bad = dict(lead_message(), score_qualificacao="alto")
    checked = validate([lead_message(), bad, "nope\x00"], partition=2, start_offset=40)
    dead = checked.transform(T.to_dead_letters(7)).orderBy("kafka_offset")
    rows = [r.asDict() for r in dead.collect()]
    assert rows == [
        {"entity": "lead", "reason": f"{T.WRONG_TYPE}: score_qualificacao", "raw_payload": encode(bad).decode(),
         "topic": "eventos", "kafka_partition": 2, "kafka_offset": 41, "batch_id": 7},
        {"entity": None, "reason": T.INVALID_JSON, "raw_payload": "nope\ufffd",
         "topic": "eventos", "kafka_partition": 2, "kafka_offset": 42, "batch_id": 7},
    ]


def test_newest_version_per_id_wins_within_a_batch(validate):
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    hours = [T0 + dt.timedelta(hours=n) for n in range(4)]
    values = [
        lead_message(id=a, updated_at=hours[2], nome="a2"),
        lead_message(id=a, updated_at=hours[3], nome="a3"),   # newest, arrives before an older one
        lead_message(id=a, updated_at=hours[1], nome="a1"),
        lead_message(id=b, updated_at=hours[1], nome="b1"),
        tombstone_message(LEAD, b, hours[2]),                 # deletion newer than b's update
        lead_message(id=b, updated_at=hours[0], nome="b0"),
        lead_message(id=c, updated_at=hours[1], nome="c-first"),
        tombstone_message(LEAD, c, hours[1]),                 # same version: the tombstone wins
        lead_message(id=c, updated_at=hours[1], nome="c-last"),
    ]
    newest = validate(values).transform(T.filter_entity(LEAD)).transform(T.with_newest_per_id(LEAD))
    rows = {r["id"]: r for r in newest.collect()}
    assert newest.columns == [c.name for c in LEAD.columns] + ["deleted"]
    assert set(rows) == {a, b, c}
    assert (rows[a]["nome"], rows[a]["deleted"]) == ("a3", False)
    assert rows[a]["updated_at"] == hours[3].astimezone(UTC).replace(tzinfo=None)
    assert rows[b]["deleted"] is True and rows[b]["nome"] is None
    assert rows[c]["deleted"] is True


def test_equal_versions_keep_the_later_kafka_record(validate):
    record_id = str(uuid.uuid4())
    values = [lead_message(id=record_id, nome="first"), lead_message(id=record_id, nome="second")]
    newest = validate(values).transform(T.filter_entity(LEAD)).transform(T.with_newest_per_id(LEAD))
    assert [r["nome"] for r in newest.collect()] == ["second"]


def test_max_payload_bytes_must_be_positive():
    with pytest.raises(ValueError, match="max_payload_bytes"):
        T.with_validation(0)


def test_documents_render_each_row_once_as_json_for_both_sinks(validate):
    lead = lead_message(utm_campaign=None)
    record_id = str(uuid.uuid4())
    checked = validate([lead, tombstone_message(LEAD, record_id, T0)])
    documents = (checked.transform(T.filter_entity(LEAD)).transform(T.with_newest_per_id(LEAD))
                 .transform(T.to_documents(LEAD)))
    assert documents.columns == list(T.DOCUMENT_COLUMNS)
    rows = {row[T.DOCUMENT_ID]: row for row in documents.collect()}
    micros = round(T0.timestamp() * 1_000_000)

    row = rows[lead["id"]]
    assert (row[T.KIND], row[T.DOCUMENT_VERSION], row[T.DELETED]) == ("lead", micros, False)
    doc = json.loads(row[T.DOCUMENT])
    assert set(doc) == {c.name for c in LEAD.columns}
    assert doc["updated_at"] == "2024-05-01T15:00:00.123456Z"  # microseconds and an offset
    assert doc["localizacao"] == lead["localizacao"]  # nested JSON, not a string
    assert doc["interesse"] == lead["interesse"] and doc["score_qualificacao"] == 87
    assert "utm_campaign" in doc and doc["utm_campaign"] is None  # nulls are kept, not dropped

    tombstone = rows[record_id]
    assert (tombstone[T.DELETED], tombstone[T.DOCUMENT_VERSION]) == (True, micros)
    assert json.loads(tombstone[T.DOCUMENT])["id"] == record_id


def test_event_documents_carry_the_payload_as_json_on_one_line(validate):
    # The payload is the received text: a pretty-printed message must still give a one-line document (bulk NDJSON).
    message = json.loads(encode(dict(evento_message(), contexto={"pagina": "/a\nb", "itens": [1, 2]})))
    checked = validate([json.dumps(message, indent=2, ensure_ascii=False)])
    documents = (checked.transform(T.filter_entity(EVENTO)).transform(T.with_newest_per_id(EVENTO))
                 .transform(T.to_documents(EVENTO)))
    text = documents.collect()[0][T.DOCUMENT]
    assert "\n" not in text and "\r" not in text
    doc = json.loads(text)
    assert set(doc) == {c.name for c in EVENTO.columns}
    assert doc["payload"] == message and doc["id"] == message["id"]


def test_dead_letters_become_documents_of_their_own_kind(validate):
    checked = validate(["nope"], partition=1, start_offset=9)
    row = checked.transform(T.to_dead_letters(3)).transform(T.dead_letter_documents).collect()[0]
    assert (row[T.KIND], row[T.DOCUMENT_ID], row[T.DOCUMENT_VERSION], row[T.DELETED]) == (T.DEAD_LETTER, None, None,
                                                                                          False)
    assert json.loads(row[T.DOCUMENT]) == {"entity": None, "reason": T.INVALID_JSON, "raw_payload": "nope",
                                           "topic": "eventos", "kafka_partition": 1, "kafka_offset": 9,
                                           "batch_id": 3}
