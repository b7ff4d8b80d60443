"""Serialisation of source rows into messages, and the extraction's settings."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid

import pytest

from include.contract import record_message
from include.entities import CHAT_SESSION, LEAD
from include.extract.config import ExtractConfig, parse_from_timestamp, schedule_from_environ, topic_asset_uri
from include.extract.encoding import can_encode, encode_rows, last_version_and_key
from include.extract.extractor import encode_page
from include.extract.pgoutput import UNCHANGED
from include.settings import SettingsError

NOW = dt.datetime(2025, 3, 1, 12, 30, 15, 250000, tzinfo=dt.timezone.utc)


def full_lead() -> dict:
    return {
        "id": uuid.UUID("3f2c1b0a-9e8d-4c7b-a6f5-e4d3c2b1a098"),
        "nome": "Antônio Conceição", "email": "antonio.conceicao7@uol.com.br", "telefone": "+55 (98) 98765-4321",
        "nome_empresa": "Padaria Pão de Açúcar ME", "nome_projeto": None,
        "localizacao": {"cidade": "São Luís", "estado": "MA", "lat": -2.53},
        "interesse": ["terreno", "uso do FGTS"], "score_qualificacao": 87, "status_lead": "negociação",
        "origem": "indicação", "utm_source": "google", "utm_medium": "cpc", "utm_campaign": "verao_litoral",
        "created_at": NOW - dt.timedelta(days=2), "updated_at": NOW,
        "last_interaction_at": NOW.astimezone(dt.timezone(dt.timedelta(hours=-3))),
    }


def test_a_row_becomes_its_registry_fields_plus_the_envelope():
    [(key, value)], dead = encode_page(LEAD, [full_lead()], record_message, NOW)

    message = json.loads(value.decode("utf-8"))
    assert dead == [] and key == b"3f2c1b0a-9e8d-4c7b-a6f5-e4d3c2b1a098"
    assert list(message) == [*LEAD.field_names, "tipo_evento", "processado_em"]
    assert message["nome"] == "Antônio Conceição" and "Ant\\u00f4nio" not in value.decode("utf-8")
    assert message["localizacao"] == {"cidade": "São Luís", "estado": "MA", "lat": -2.53}
    assert message["interesse"] == ["terreno", "uso do FGTS"]
    assert message["updated_at"] == "2025-03-01T12:30:15.250000+00:00"
    assert message["last_interaction_at"] == "2025-03-01T09:30:15.250000-03:00"
    assert message["tipo_evento"] == "lead" and message["processado_em"] == NOW.isoformat()


def test_columns_outside_the_registry_are_not_published():
    row = full_lead() | {"internal_notes": "não publicar"}
    [(_, value)], _ = encode_page(LEAD, [row], record_message, NOW)
    assert "internal_notes" not in json.loads(value)


@pytest.mark.parametrize("field, value, reason", [
    ("id", None, "missing id"),
    ("updated_at", None, "missing updated_at"),
    ("created_at", dt.datetime(2025, 1, 1), "unserialisable value: timestamp without time zone"),
    ("score_qualificacao", decimal.Decimal("NaN"), "unserialisable value: non-finite number"),
    ("localizacao", {"lat": float("inf")}, "unserialisable value: Out of range float values"),
    ("nome", b"\x00bytes", "unserialisable value: bytes is not JSON serialisable"),
])
def test_bad_rows_are_dead_letters_with_reason_and_raw_payload(field, value, reason):
    bad = full_lead() | {field: value}
    good = full_lead() | {"id": uuid.uuid4()}

    messages, [dead] = encode_page(LEAD, [bad, good], record_message, NOW)

    assert [key for key, _ in messages] == [str(good["id"]).encode()]
    assert dead.entity == "lead" and dead.reason.startswith(reason)
    payload = json.loads(dead.raw_payload)
    assert payload["email"] == bad["email"] and payload["id"] == (bad["id"] and str(bad["id"]))


def test_chat_sessions_serialise_booleans_and_arrays():
    row = {name: None for name in CHAT_SESSION.field_names} | {
        "id": uuid.uuid4(), "lead_id": uuid.uuid4(), "is_active": False, "pages_visited": ["/", "/contato"],
        "total_messages": 12, "updated_at": NOW}
    [(_, value)], _ = encode_page(CHAT_SESSION, [row], record_message, NOW)
    message = json.loads(value)
    assert message["is_active"] is False and message["pages_visited"] == ["/", "/contato"]
    assert message["lead_id"] == str(row["lead_id"]) and message["tipo_evento"] == "chat_session"


def as_encoded_query_row(entity, row: dict, encodable: bool = True) -> tuple:
    """The row as PostgresSource's encoded query returns it: its flag, then each value pre-formatted."""
    def value(field):
        v = row.get(field.name)
        if v is None:
            return None
        return {"uuid": str, "jsonb": json.dumps, "timestamptz": dt.datetime.isoformat}.get(field.type, lambda x: x)(v)
    return (encodable, *(value(f) for f in entity.fields))


def test_encoded_rows_are_the_messages_the_row_by_row_path_writes():
    rows = [full_lead(), full_lead() | {"id": uuid.uuid4(), "localizacao": None, "interesse": [], "nome": 'a "b"\n'}]
    session = {name: None for name in CHAT_SESSION.field_names} | {
        "id": uuid.uuid4(), "is_active": True, "pages_visited": ["/", None], "updated_at": NOW}

    for entity, page in ((LEAD, rows), (CHAT_SESSION, [session])):
        encoded = encode_rows(entity, [as_encoded_query_row(entity, row) for row in page], NOW)
        expected, _ = encode_page(entity, page, record_message, NOW)
        assert [key for key, _ in encoded] == [key for key, _ in expected]
        assert [list(json.loads(value).items()) for _, value in encoded] == [
            list(json.loads(value).items()) for _, value in expected]
    assert last_version_and_key(LEAD, [as_encoded_query_row(LEAD, row) for row in rows]) == (
        rows[-1]["updated_at"], str(rows[-1]["id"]))


@pytest.mark.parametrize("field, value, encodable", [
    ("id", None, True),
    ("updated_at", None, True),
    # The query's flag: a timestamp isoformat() writes differently from it.
    ("created_at", "1950-06-01T00:00:00+00:00", False),
    # Parsed by the row-by-row path into an infinite float, which the contract rejects.
    ("localizacao", '{"n": %s.5}' % ("1" * 310), True),
])
def test_a_row_the_encoded_path_cannot_write_sends_its_page_row_by_row(field, value, encodable):
    good = as_encoded_query_row(LEAD, full_lead())
    bad = list(as_encoded_query_row(LEAD, full_lead(), encodable))
    bad[LEAD.field_names.index(field) + 1] = value

    assert encode_rows(LEAD, [good, tuple(bad)], NOW) is None
    long_text = list(good)
    long_text[LEAD.field_names.index("localizacao") + 1] = json.dumps({"nota": "ã" * 400, "n": 12345})
    assert len(encode_rows(LEAD, [good, tuple(long_text)], NOW)) == 2


def test_only_entities_of_types_the_encoded_query_writes_use_it():
    from include.entities import EVENTO

    assert can_encode(LEAD) and can_encode(CHAT_SESSION) and not can_encode(EVENTO)


def test_page_size_defaults_by_source():
    assert ExtractConfig().page_size == 5000 and ExtractConfig("rest").page_size == 1000
    assert ExtractConfig.load({"PIPELINE_EXTRACT_SOURCE": "rest"}).page_size == 1000
    assert ExtractConfig.load({"PIPELINE_EXTRACT_PAGE_SIZE": "750"}).page_size == 750


def test_config_from_settings_and_its_validation():
    config = ExtractConfig.load({"PIPELINE_EXTRACT_SOURCE": "rest", "PIPELINE_EXTRACT_PAGE_SIZE": "500",
                                 "PIPELINE_EXTRACT_LOOKBACK_SECONDS": "90"})
    assert config == ExtractConfig("rest", 500, dt.timedelta(seconds=90))
    options = config.run_options(from_timestamp=NOW, max_rows=7)
    assert (options.page_size, options.lookback, options.from_timestamp, options.max_rows) == (
        500, dt.timedelta(seconds=90), NOW, 7)
    with pytest.raises(SettingsError, match="PIPELINE_EXTRACT_SOURCE"):
        ExtractConfig.load({"PIPELINE_EXTRACT_SOURCE": "graphql"})
    with pytest.raises(SettingsError, match="PIPELINE_EXTRACT_PAGE_SIZE='many'"):
        ExtractConfig.load({"PIPELINE_EXTRACT_PAGE_SIZE": "many"})


def test_extraction_bounds_from_settings_reach_the_run_and_the_rest_source():
    config = ExtractConfig.load({"PIPELINE_EXTRACT_SAFETY_MARGIN_SECONDS": "4",
                                 "PIPELINE_EXTRACT_ALLOWED_SKEW_SECONDS": "120",
                                 "PIPELINE_EXTRACT_REST_CLOCK_MARGIN_SECONDS": "45",
                                 "PIPELINE_EXTRACT_MAX_PAYLOAD_BYTES": "100000"})
    options = config.run_options()
    assert (options.safety_margin, options.allowed_skew, options.max_payload_bytes) == (
        dt.timedelta(seconds=4), dt.timedelta(seconds=120), 100_000)
    assert config.rest_clock_margin == dt.timedelta(seconds=45)
    assert ExtractConfig().max_payload_bytes == 256 * 1024
    for name, value in [("PIPELINE_EXTRACT_SAFETY_MARGIN_SECONDS", "-1"),
                        ("PIPELINE_EXTRACT_ALLOWED_SKEW_SECONDS", "-5"),
                        ("PIPELINE_EXTRACT_REST_CLOCK_MARGIN_SECONDS", "-1"),
                        ("PIPELINE_EXTRACT_MAX_PAYLOAD_BYTES", "0"), ("PIPELINE_EXTRACT_MAX_PAYLOAD_BYTES", "lots")]:
        with pytest.raises(SettingsError, match=name):
            ExtractConfig.load({name: value})


def test_schedule_and_asset_come_from_the_environment():
    assert schedule_from_environ({}) == "*/10 * * * *"
    assert schedule_from_environ({"PIPELINE_EXTRACT_SCHEDULE": "@hourly"}) == "@hourly"
    assert topic_asset_uri({"PIPELINE_KAFKA_HOST": "kafka.internal", "PIPELINE_KAFKA_PORT": "9092",
                            "PIPELINE_KAFKA_TOPIC": "eventos_test"}) == "kafka://kafka.internal:9092/eventos_test"


def test_backfill_timestamp_needs_an_offset():
    assert parse_from_timestamp("") is None
    assert parse_from_timestamp("2025-03-01T09:30:00-03:00") == dt.datetime(2025, 3, 1, 12, 30, tzinfo=dt.timezone.utc)
    with pytest.raises(ValueError, match="needs a UTC offset"):
        parse_from_timestamp("2025-03-01T09:30:00")


class _NoConnection:
    """An adapt context without a connection: psycopg's default adapters, timestamps loaded in UTC."""

    connection = None

    def __init__(self):
        import psycopg

        self.adapters = psycopg.adapters


def pgoutput_change(entity, text: dict, extra_first: bool = True, oids: dict | None = None):
    """A Relation of the entity's table (an unpublished column first, registry columns reversed: the encoder must
    go by name) and the change's values as pgoutput sends them: the columns' text output, None for NULL."""
    import psycopg

    from include.extract.pgoutput import Column, Relation

    oids = oids or {}
    columns = [Column(f.name, oids.get(f.name, psycopg.adapters.types[f.pg_type].oid), f.name == entity.key)
               for f in reversed(entity.fields)]
    if extra_first:
        columns.insert(0, Column("internal_notes", psycopg.adapters.types["text"].oid, False))
    relation = Relation(16385, "public", entity.source_table, "d", tuple(columns))
    values = tuple(None if c.name not in text else text[c.name] for c in columns)
    return relation, values


LEAD_TEXT = {
    "id": b"3f2c1b0a-9e8d-4c7b-a6f5-e4d3c2b1a098", "nome": 'Antônio "Tó" Conceição\n'.encode(),
    "email": b"antonio@uol.com.br", "localizacao": '{"lat": -2.53, "cidade": "São Luís", "n": 1e-06}'.encode(),
    "interesse": b'{terreno,"uso do FGTS",NULL}', "score_qualificacao": b"87", "status_lead": "negociação".encode(),
    "created_at": b"2025-02-27 12:30:15+00", "updated_at": b"2025-03-01 12:30:15.25+00",
    "last_interaction_at": b"2025-03-01 09:30:15.000001-03", "internal_notes": b"not published",
}


def row_by_row(entity, relation, values, position):
    """What cdc's row-by-row path writes for the change (RowLoader, the contract's message and encoder)."""
    from include.extract.cdc import _with_position
    from include.extract.pgoutput import RowLoader

    return encode_page(entity, [RowLoader(_NoConnection()).row(relation, values)], _with_position(position), NOW)


def test_cdc_changes_encoded_from_pgoutput_text_are_the_row_by_row_messages():
    from include.extract.encoding import ChangeEncoder
    from include.extract.pgoutput import RowLoader

    encoder = ChangeEncoder(RowLoader(_NoConnection()))
    session = {"id": b"6a3e3b8e-8f8e-4bde-9d4b-2f6f2c2f7a10", "is_active": b"f", "pages_visited": b"{/,/contato}",
               "total_messages": b"12", "updated_at": b"2025-03-01 12:30:15.25+00"}
    for entity, text in ((LEAD, LEAD_TEXT), (LEAD, {**LEAD_TEXT, "localizacao": None, "interesse": b"{}"}),
                         (CHAT_SESSION, session)):
        relation, values = pgoutput_change(entity, text)
        key, value = encoder.encode(entity, relation, values, "0000000100000A0/00000003", NOW)
        [(expected_key, expected)], dead = row_by_row(entity, relation, values, "0000000100000A0/00000003")
        assert dead == [] and key == expected_key
        assert list(json.loads(value).items()) == list(json.loads(expected).items())
        assert list(json.loads(value))[-1] == "source_position"


@pytest.mark.parametrize("change", [
    {"updated_at": None},  # a required field NULL: the row-by-row path's dead letter
    {"nome": UNCHANGED},  # an unchanged TOASTed value: the row-by-row path takes it from the old row, or fails
    {"localizacao": ('{"n": %s.5}' % ("1" * 310)).encode()},  # an infinite float in the contract's encoder
])
def test_a_change_the_fast_path_cannot_write_goes_row_by_row(change):
    from include.extract.encoding import ChangeEncoder
    from include.extract.pgoutput import RowLoader

    relation, values = pgoutput_change(LEAD, {**LEAD_TEXT, **change})
    assert ChangeEncoder(RowLoader(_NoConnection())).encode(LEAD, relation, values, "0/0", NOW) is None


def test_a_column_of_another_type_or_a_missing_one_goes_row_by_row():
    import psycopg

    from include.extract.encoding import ChangeEncoder
    from include.extract.pgoutput import RowLoader

    encoder = ChangeEncoder(RowLoader(_NoConnection()))
    # json keeps its text as written (spaces, duplicate keys): only jsonb's is the contract's value.
    relation, values = pgoutput_change(LEAD, LEAD_TEXT, oids={"localizacao": psycopg.adapters.types["json"].oid})
    assert encoder.encode(LEAD, relation, values, "0/0", NOW) is None
    relation, values = pgoutput_change(LEAD, LEAD_TEXT)
    without = relation.__class__(relation.oid, relation.schema, relation.table, relation.replica_identity,
                                 tuple(c for c in relation.columns if c.name != "email"))
    assert encoder.encode(LEAD, without, tuple(v for c, v in zip(relation.columns, values) if c.name != "email"),
                          "0/0", NOW) is None
