"""The streaming job's validation (plain Python) and its transform on tiny literal DataFrames shaped like the Kafka
source."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid

import pytest

from include.contract import encode, tombstone_message
from include.entities import CHAT_SESSION, EVENTO, LEAD
from spark import transforms as T
from spark import validation as V
from tests.stream_support import (KAFKA_SCHEMA, T0, UTC, as_bytes, chat_message, evento_message, kafka_frame,
                                  lead_message, poison_catalog, with_members)

MAX_BYTES = 64 * 1024


def check(value) -> V.Validated:
    return V.validate(as_bytes(value), MAX_BYTES)


def reason(value) -> str | None:
    return check(value).reason


def test_valid_messages_are_routed_with_every_field_intact():
    lead, chat, evento = lead_message(), chat_message(), evento_message()
    assert [check(m).entity for m in (lead, chat, evento)] == [LEAD, CHAT_SESSION, EVENTO]

    row = check(lead).row
    assert list(row) == [c.name for c in LEAD.columns]
    assert row["id"] == lead["id"]
    assert row["nome"] == "João Conceição" and row["nome_empresa"] == "Ação & Cia"
    assert row["interesse"] == ["imóveis", "crédito"]
    assert json.loads(V.render(row["localizacao"])) == lead["localizacao"]  # numbers parsed as exact decimals
    assert row["score_qualificacao"] == 87
    # Instants in UTC: -03:00 becomes +3 hours, microseconds kept.
    assert row["updated_at"] == dt.datetime(2024, 5, 1, 15, 0, 0, 123456, tzinfo=UTC)
    assert row["processado_em"] == dt.datetime(2024, 5, 1, 15, 0, 0, 123456, tzinfo=UTC)
    assert check(lead).deleted is False

    chat_row = check(chat).row
    assert chat_row["pages_visited"] == ["/", "/preços"] and chat_row["perguntas_feitas"] == []
    assert chat_row["is_active"] is True and chat_row["ended_at"] is None and chat_row["total_messages"] == 12

    evento_row = check(evento).row
    assert evento_row["valor"] == decimal.Decimal("12.5") and str(evento_row["valor"]) == "12.500000000"
    assert evento_row["payload"]["evento"] == "clique"
    assert list(evento_row) == [c.name for c in EVENTO.columns]


def test_uuid_is_normalised_to_lower_case_and_unknown_fields_are_ignored():
    upper = str(uuid.uuid4()).upper()
    verdict = check(dict(lead_message(id=upper), campo_novo="ignored"))
    assert verdict.key == upper.lower() and "campo_novo" not in verdict.row


def test_iso_timestamps_with_any_offset_parse_to_the_same_instant():
    timestamps = ["2024-05-01T15:00:00Z", "2024-05-01T15:00:00+00:00", "2024-05-01 12:00:00-03",
                  "2024-05-01T18:00:00+0300", "2024-05-01T15:00:00.000000+00:00", "2024-05-01T15:00:00.0000001Z"]
    versions = [check(dict(lead_message(), updated_at=timestamp)).version for timestamp in timestamps]
    assert versions == [dt.datetime(2024, 5, 1, 15, 0, 0, tzinfo=UTC)] * len(timestamps)


@pytest.mark.parametrize("name, value, expected", poison_catalog(MAX_BYTES), ids=lambda v: v if isinstance(v, str)
                         and len(v) < 40 else "")
def test_each_reject_kind_has_its_reason(name, value, expected):
    assert reason(value) == expected


@pytest.mark.parametrize("value, expected", [
    (with_members(lead_message(), nome="\ud800"), f"{V.UNSTORABLE_TEXT}: nome"),  # a lone surrogate: not UTF-8
    (dict(evento_message(), extra={"\x00key": 1}), f"{V.UNSTORABLE_TEXT}: payload"),  # a NUL in a key
    ('{"tipo_evento": "lead", "id": NaN}', V.INVALID_JSON),
    ('\ufeff{"tipo_evento": "lead"}', V.INVALID_JSON),
    ('{"tipo_evento": "lead", "x": {"a": 1, "a": 2}}', V.INVALID_JSON),  # duplicates at any depth
    (dict(evento_message(), valor=decimal.Decimal("1" * 30)), f"{V.WRONG_TYPE}: valor"),  # 30 integer digits
    (dict(lead_message(), deleted=None), None),  # JSON null: not a tombstone
    (dict(lead_message(), id="   "), V.MISSING_ID),
    (dict(lead_message(), nome="   "), None),  # blank is only refused in a required field
    (dict(evento_message(), occurred_at="   "), f"{V.UNPARSEABLE_TIMESTAMP}: occurred_at"),
    (dict(lead_message(), created_at="0000-01-01T00:00:00Z"), f"{V.UNPARSEABLE_TIMESTAMP}: created_at"),
    (dict(lead_message(), score_qualificacao=True), f"{V.WRONG_TYPE}: score_qualificacao"),
    (dict(lead_message(), score_qualificacao=2**31 - 1), None),
    (dict(lead_message(), score_qualificacao=2**31), f"{V.WRONG_TYPE}: score_qualificacao"),
    (dict(lead_message(), interesse=["a", None]), None),
    (dict(lead_message(), interesse=[["a"]]), f"{V.WRONG_TYPE}: interesse"),
])
def test_edge_cases(value, expected):
    assert reason(value) == expected


def test_numbers_keep_every_digit():
    message = with_members(evento_message(), valor="VALOR", contexto={"preco": "PRECO", "grande": 10**30})
    message = message.replace('"VALOR"', "12345678901234567890.1234567894").replace('"PRECO"', "0.10000000000000000001")
    row = check(message).row
    assert row["valor"] == decimal.Decimal("12345678901234567890.123456789")  # decimal(38,9), rounded half up
    document = V.render(row)
    assert '"preco":0.10000000000000000001' in document and f'"grande":{10**30}' in document


def test_escaped_backslash_before_u0000_is_not_a_nul():
    assert reason(dict(lead_message(), localizacao={"path": "C:\\u0000"})) is None


def test_tombstone_needs_only_key_and_version():
    record_id = str(uuid.uuid4())
    tombstone = tombstone_message(LEAD, record_id, T0, processado_em=T0)
    verdict = check(tombstone)
    assert (verdict.reason, verdict.deleted, verdict.key, verdict.row["nome"]) == (None, True, record_id, None)
    assert reason(with_members(tombstone, updated_at=None)) == f"{V.MISSING_REQUIRED}: updated_at"
    # Ignored fields are not checked either.
    assert reason(dict(tombstone, nome=42)) is None


def test_max_payload_bytes_must_be_positive():
    with pytest.raises(ValueError, match="max_payload_bytes"):
        T.to_documents(0)


# --- the transform, through Spark -----------------------------------------------------------------------------------

@pytest.fixture
def documents(spark):
    def run(values, **position):
        frame = kafka_frame(spark, values, **position).transform(T.to_documents(MAX_BYTES))
        return [row.asDict() for row in frame.orderBy("offset").collect()]

    return run


def test_every_row_becomes_one_document_and_rejects_do_not_taint_valid_rows(documents):
    poison = poison_catalog(MAX_BYTES)
    rows = documents([value for _, value, _ in poison] + [lead_message(), chat_message(), evento_message()])
    assert [r[T.KIND] for r in rows] == [T.DEAD_LETTER] * len(poison) + ["lead", "chat_session", "evento"]
    assert [r[T.REASON] for r in rows] == [expected for _, _, expected in poison] + [None] * 3
    assert set(rows[0]) == {name.split()[0] for name in T.DOCUMENT_SCHEMA.split(", ")}


def test_a_row_of_nulls_is_an_invalid_json_reject(spark):
    frame = spark.createDataFrame([(None, None, "eventos", 0, 0, dt.datetime(2024, 5, 1))], KAFKA_SCHEMA)
    row = frame.transform(T.to_documents(MAX_BYTES)).collect()[0]
    assert (row[T.KIND], row[T.REASON]) == (T.DEAD_LETTER, V.INVALID_JSON)
    assert json.loads(row[T.DOCUMENT])["raw_payload"] is None


def test_dead_letters_carry_reason_raw_payload_and_kafka_position(documents):
    bad = dict(lead_message(), score_qualificacao="alto")
    rows = documents([lead_message(), bad, "nope\x00", b"\xff\xfe"], partition=2, start_offset=40)
    assert [json.loads(r[T.DOCUMENT]) for r in rows[1:]] == [
        {"entity": "lead", "reason": f"{V.WRONG_TYPE}: score_qualificacao", "raw_payload": encode(bad).decode(),
         "topic": "eventos", "kafka_partition": 2, "kafka_offset": 41},
        {"entity": None, "reason": V.INVALID_JSON, "raw_payload": "nope\ufffd",
         "topic": "eventos", "kafka_partition": 2, "kafka_offset": 42},
        {"entity": None, "reason": V.INVALID_JSON, "raw_payload": "\ufffd\ufffd",
         "topic": "eventos", "kafka_partition": 2, "kafka_offset": 43},
    ]
    assert [(r[T.DOCUMENT_ID], r[T.DOCUMENT_VERSION], r[T.DELETED]) for r in rows[1:]] == [(None, None, False)] * 3


def test_documents_render_each_row_once_as_json_for_both_sinks(documents):
    lead = lead_message(utm_campaign=None)
    record_id = str(uuid.uuid4())
    rows = documents([lead, tombstone_message(LEAD, record_id, T0)], partition=1, start_offset=7)

    row = rows[0]
    assert (row[T.KIND], row[T.DOCUMENT_ID], row[T.DELETED]) == ("lead", lead["id"], False)
    assert row[T.DOCUMENT_VERSION] == T0.astimezone(UTC).replace(tzinfo=None)  # the session time zone is UTC
    assert (row["partition"], row["offset"]) == (1, 7)
    doc = json.loads(row[T.DOCUMENT])
    assert list(doc) == [c.name for c in LEAD.columns]
    assert doc["updated_at"] == "2024-05-01T15:00:00.123456Z"  # microseconds and an offset
    assert doc["localizacao"] == lead["localizacao"]  # nested JSON, not a string
    assert doc["interesse"] == lead["interesse"] and doc["score_qualificacao"] == 87
    assert "utm_campaign" in doc and doc["utm_campaign"] is None  # nulls are kept, not dropped

    tombstone = rows[1]
    assert (tombstone[T.DOCUMENT_ID], tombstone[T.DELETED]) == (record_id, True)
    assert json.loads(tombstone[T.DOCUMENT])["id"] == record_id


def test_event_documents_carry_the_payload_as_json_on_one_line(documents):
    # A pretty-printed message must still give a one-line document (the bulk API's NDJSON).
    message = json.loads(encode(dict(evento_message(), contexto={"pagina": "/a\nb", "itens": [1, 2]})))
    (row,) = documents([json.dumps(message, indent=2, ensure_ascii=False)])
    assert "\n" not in row[T.DOCUMENT] and "\r" not in row[T.DOCUMENT]
    doc = json.loads(row[T.DOCUMENT])
    assert list(doc) == [c.name for c in EVENTO.columns]
    assert doc["payload"] == message and doc["id"] == message["id"]
