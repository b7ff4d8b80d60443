"""The streaming job's validation (plain Python) and its transform on tiny literal DataFrames shaped like the Kafka
source."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid

import pytest

from include.contract import DEFAULT_MAX_VERSION_SKEW_SECONDS, encode, tombstone_message
from include.entities import CHAT_SESSION, EVENTO, LEAD, TYPES
from spark import transforms as T
from spark import validation as V
from tests.stream_support import (KAFKA_SCHEMA, P0, T0, UTC, as_bytes, chat_message, evento_message, kafka_frame,
                                  lead_message, poison_catalog, position, with_members)

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


KEYWORD_MAX = TYPES["keyword"].max_bytes
ITEMS_MAX = TYPES["text[]"].max_items


def nested(depth: int) -> str:
    """A lead whose localizacao nests arrays so that the message is `depth` deep (its own object is the first)."""
    return with_members(lead_message(), localizacao="DEEP").replace('"DEEP"', "[" * (depth - 1) + "]" * (depth - 1))


@pytest.mark.parametrize("value, expected", [
    (nested(V.MAX_DEPTH), None),
    (nested(V.MAX_DEPTH + 1), V.TOO_DEEP),
    (with_members(evento_message(), ctx={"a": {"b": "DEEP"}}).replace('"DEEP"', "{" * 70 + "}" * 70), V.TOO_DEEP),
    (dict(lead_message(), nome="[{" * 5000), None),  # brackets inside strings do not nest
    (dict(lead_message(), nome='\\"' + "[" * 200), None),  # an escaped quote does not end the string
    ('{"tipo_evento": "lead", "nome": "' + "[" * 200, V.INVALID_JSON),  # nor does an unterminated one nest
    (dict(lead_message(), email="é" * (KEYWORD_MAX // 2)), None),  # bytes of UTF-8 are counted, not characters
    (dict(lead_message(), email="é" * (KEYWORD_MAX // 2) + "x"), f"{V.TOO_LARGE}: email"),
    (dict(lead_message(), email="😀" * (KEYWORD_MAX // 4) + "x"), f"{V.TOO_LARGE}: email"),
    (dict(lead_message(), nome="x" * 40_000), None),  # text: its keyword subfield skips long values
    (dict(lead_message(), interesse=["a"] * ITEMS_MAX), None),
    (dict(lead_message(), interesse=["a"] * (ITEMS_MAX + 1)), f"{V.TOO_LARGE}: interesse"),
    (dict(lead_message(), interesse=[None, "x" * KEYWORD_MAX]), None),
    (dict(lead_message(), interesse=[None, "x" * (KEYWORD_MAX + 1)]), f"{V.TOO_LARGE}: interesse"),
    (with_members(lead_message(), localizacao={"n": "N"}).replace('"N"', "1e308"), None),
    (with_members(lead_message(), localizacao={"n": "N"}).replace('"N"', "-1e-308"), None),
    (with_members(lead_message(), localizacao={"n": "N"}).replace('"N"', "1e309"), f"{V.TOO_LARGE}: localizacao"),
    (with_members(lead_message(), localizacao={"n": "N"}).replace('"N"', "1E-309"), f"{V.TOO_LARGE}: localizacao"),
    (with_members(lead_message(), localizacao={"n": "N"}).replace('"N"', "1e100000"), f"{V.TOO_LARGE}: localizacao"),
    (with_members(lead_message(), localizacao=[10 ** 100 - 1, -(10 ** 100 - 1)]), None),
    (with_members(lead_message(), localizacao=[1, [10 ** 100]]), f"{V.TOO_LARGE}: localizacao"),
    (with_members(lead_message(), localizacao={"n": "N"}).replace('"N"', "0." + "1" * 100), None),
    (with_members(lead_message(), localizacao={"n": "N"}).replace('"N"', "0." + "1" * 101),
     f"{V.TOO_LARGE}: localizacao"),
    (with_members(evento_message(), contexto={"n": "N"}).replace('"N"', "-1e999"), f"{V.TOO_LARGE}: payload"),
    (with_members(lead_message(), campo_novo="N").replace('"N"', "1e999"), None),  # ignored, never stored
    (with_members(evento_message(), valor="N").replace('"N"', "1e999"), f"{V.WRONG_TYPE}: valor"),
    (with_members(evento_message(), valor="N").replace('"N"', "9" * 29 + ".9999999994"), None),
    (with_members(evento_message(), valor="N").replace('"N"', "9" * 29 + ".9999999995"), f"{V.WRONG_TYPE}: valor"),
    (with_members(lead_message(), localizacao={"n": "N"}).replace('"N"', "1" * 4301), V.INVALID_JSON),
])
def test_limits_of_each_type(value, expected):
    assert reason(value) == expected


def test_versions_are_refused_before_1970_and_after_the_clock_plus_the_skew():
    newest = dt.datetime(2030, 1, 1, tzinfo=UTC)
    verdicts = [V.validate(as_bytes(dict(lead_message(), updated_at=moment)), MAX_BYTES, newest_version=newest).reason
                for moment in ("1970-01-01T00:00:00Z", "2030-01-01T00:00:00Z", "2030-01-01T00:00:00.000001Z",
                               "2029-12-31T21:00:00-03:00", "2029-12-31T21:00:01-03:00")]
    out = f"{V.VERSION_OUT_OF_RANGE}: updated_at"
    assert verdicts == [None, None, out, None, out]
    # Only the version column: other timestamps may be anything Python, Postgres and Elasticsearch all hold.
    assert reason(dict(lead_message(), created_at="9999-12-31T23:59:59Z", last_interaction_at="0001-01-01T00:00:00Z")) \
        is None
    tombstone = tombstone_message(EVENTO, str(uuid.uuid4()), T0)
    assert V.validate(as_bytes(tombstone), MAX_BYTES, newest_version=T0 - dt.timedelta(microseconds=1)).reason == \
        f"{V.VERSION_OUT_OF_RANGE}: occurred_at"
    # By default, the clock now plus the default skew.
    soon = dt.datetime.now(UTC) + dt.timedelta(seconds=DEFAULT_MAX_VERSION_SKEW_SECONDS - 30)
    later = dt.datetime.now(UTC) + dt.timedelta(seconds=DEFAULT_MAX_VERSION_SKEW_SECONDS + 30)
    assert [reason(dict(lead_message(), updated_at=moment)) for moment in (soon, later)] == [None, out]


def test_the_version_skew_must_not_be_negative():
    with pytest.raises(ValueError, match="max_version_skew_seconds"):
        T.documents_of(MAX_BYTES, max_version_skew_seconds=-1)


def arrow_batch(values):
    import pyarrow as pa

    count = len(values)
    return pa.RecordBatch.from_arrays(
        [pa.array([as_bytes(v) for v in values], pa.binary()), pa.array(["eventos"] * count, pa.string()),
         pa.array([0] * count, pa.int32()), pa.array(range(100, 100 + count), pa.int64()),
         pa.array([dt.datetime(2024, 5, 1)] * count, pa.timestamp("us"))],
        names=list(T.KAFKA_COLUMNS))


def test_a_message_the_validator_raises_on_is_a_dead_letter_and_its_batch_goes_on(monkeypatch, caplog):
    # Stands in for a bug not found yet: the validator raising on one message.
    validate = V.validate

    def raising_on_boom(value, *args, **kwargs):
        if b"boom" in value:
            raise RecursionError("maximum recursion depth exceeded")
        return validate(value, *args, **kwargs)

    monkeypatch.setattr(T, "validate", raising_on_boom)
    lead, bad, evento = lead_message(), dict(lead_message(), nome="boom"), evento_message()
    with caplog.at_level("ERROR", logger=T.__name__):
        batch = T.documents_of(MAX_BYTES)(arrow_batch([lead, bad, bad, evento])).to_pydict()
    assert batch[T.KIND] == ["lead", T.DEAD_LETTER, T.DEAD_LETTER, "evento"]
    assert batch[T.REASON] == [None, f"{V.VALIDATOR_ERROR}: RecursionError", f"{V.VALIDATOR_ERROR}: RecursionError",
                               None]
    assert json.loads(batch[T.DOCUMENT][1]) == {
        "entity": None, "reason": f"{V.VALIDATOR_ERROR}: RecursionError", "raw_payload": encode(bad).decode(),
        "topic": "eventos", "kafka_partition": 0, "kafka_offset": 101}
    assert batch[T.DOCUMENT_ID] == [lead["id"], None, None, evento["id"]]
    (record,) = caplog.records  # once per batch, naming the exception type
    assert "RecursionError" in record.getMessage() and "2" in record.getMessage() and record.exc_info


def test_a_document_that_cannot_be_rendered_is_a_dead_letter_too(monkeypatch):
    render = V.render

    def failing_on_boom(document):
        if document.get("nome") == "boom":
            raise OverflowError("cannot render")
        return render(document)

    monkeypatch.setattr(T, "render", failing_on_boom)
    batch = T.documents_of(MAX_BYTES)(arrow_batch([dict(lead_message(), nome="boom"), lead_message()])).to_pydict()
    assert batch[T.REASON] == [f"{V.VALIDATOR_ERROR}: OverflowError", None]


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


@pytest.mark.parametrize("position, expected", [
    ("0000000016B37480/00000003", None),
    ("00007FFFFFFFFFFF/FFFFFFFF", None),  # the last LSN whose Elasticsearch version fits 63 bits
    ("0000800000000000/00000000", f"{V.VERSION_OUT_OF_RANGE}: source_position"),
    ("0000000016b37480/00000003", f"{V.WRONG_TYPE}: source_position"),  # lower case would not sort as upper
    ("16B37480/3", f"{V.WRONG_TYPE}: source_position"),
    ("0000000016B37480/00000003 ", f"{V.WRONG_TYPE}: source_position"),
    (1234, f"{V.WRONG_TYPE}: source_position"),
    (None, f"{V.MISSING_REQUIRED}: source_position"),
])
def test_a_position_ordered_entity_needs_a_source_position(position, expected):
    """chat_session has no version column: its order is the cdc extraction's source position, required in every
    message, a tombstone's included, and only in the form that sorts as text in commit order."""
    record_id = str(uuid.uuid4())
    for message in (chat_message(id=record_id), tombstone_message(CHAT_SESSION, record_id, P0)):
        assert reason(dict(message, source_position=position)) == expected
    verdict = check(chat_message(source_position=P0))
    assert (verdict.version, verdict.position, verdict.row["source_position"]) == (None, P0, P0)


def test_a_version_ordered_entity_ignores_a_source_position():
    verdict = check(dict(lead_message(), source_position="not a position"))
    assert verdict.position is None and "source_position" not in verdict.row


def test_max_payload_bytes_must_be_positive():
    with pytest.raises(ValueError, match="max_payload_bytes"):
        T.to_documents(0)


# --- the transform, through Spark -----------------------------------------------------------------------------------

@pytest.fixture
def documents(spark):
    def run(values, **kafka_position):
        frame = kafka_frame(spark, values, **kafka_position).transform(T.to_documents(MAX_BYTES))
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
    assert row[T.DOCUMENT_POSITION] is None and tombstone[T.DOCUMENT_POSITION] is None


def test_position_ordered_documents_carry_the_position_and_no_version(documents):
    session = chat_message(source_position=position(0x16B37480, 2))
    rows = documents([session, tombstone_message(CHAT_SESSION, session["id"], position(0x16B37490))])
    assert [(r[T.DOCUMENT_VERSION], r[T.DOCUMENT_POSITION], r[T.DELETED]) for r in rows] == [
        (None, "0000000016B37480/00000002", False), (None, "0000000016B37490/00000000", True)]
    assert json.loads(rows[0][T.DOCUMENT])["source_position"] == "0000000016B37480/00000002"


def test_event_documents_carry_the_payload_as_json_on_one_line(documents):
    # A pretty-printed message must still give a one-line document (the bulk API's NDJSON).
    message = json.loads(encode(dict(evento_message(), contexto={"pagina": "/a\nb", "itens": [1, 2]})))
    (row,) = documents([json.dumps(message, indent=2, ensure_ascii=False)])
    assert "\n" not in row[T.DOCUMENT] and "\r" not in row[T.DOCUMENT]
    doc = json.loads(row[T.DOCUMENT])
    assert list(doc) == [c.name for c in EVENTO.columns]
    assert doc["payload"] == message and doc["id"] == message["id"]
