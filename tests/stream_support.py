"""Messages, Kafka-shaped frames and producing, shared by the streaming job's unit, integration and e2e tests."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from pathlib import Path
from typing import Iterable

from include.contract import encode, message_key, record_message
from include.entities import BY_TIPO_EVENTO, CHAT_SESSION, EVENTO, LEAD, SOURCE_POSITION
from include.extract.cdc import source_position
from include.orchestration.driver_lock import process_stat

KAFKA_SCHEMA = "key binary, value binary, topic string, partition int, offset long, timestamp timestamp"
UTC = dt.timezone.utc
BRT = dt.timezone(dt.timedelta(hours=-3))
T0 = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=BRT)
# A source position as the cdc extraction writes it (commit LSN, index in the transaction).
P0 = source_position(0x16B37480, 0)


def position(commit_lsn: int, index: int = 0) -> str:
    return source_position(commit_lsn, index)


def nth_order(entity, n: int):
    """The order of a record's n-th version: minutes after T0 in its version column, or a later source position
    for an entity ordered by it (include/entities.py); pass it as `**{entity.order_column: ...}`."""
    return T0 + dt.timedelta(minutes=n) if entity.version_column else position(0x1000 + n)


def external_version(order) -> int:
    """Elasticsearch's version of an order (include/sql/sink_order.sql), worked out here independently."""
    if isinstance(order, str):
        lsn, index = (int(part, 16) for part in order.split("/"))
        return (lsn << 16) + min(index, 65_535)
    return round(order.timestamp() * 1_000_000)


def lead_message(processado_em: dt.datetime = T0, **fields) -> dict:
    row = {
        "id": str(uuid.uuid4()),
        "nome": "João Conceição",
        "email": "joao@example.com",
        "telefone": "+55 11 99999-0000",
        "nome_empresa": "Ação & Cia",
        "nome_projeto": "Expansão",
        "localizacao": {"cidade": "São Paulo", "coords": [-23.55, -46.63], "detalhes": {"bairro": "Sé"}},
        "interesse": ["imóveis", "crédito"],
        "score_qualificacao": 87,
        "status_lead": "novo",
        "origem": "site",
        "utm_source": "google",
        "utm_medium": "cpc",
        "utm_campaign": "inverno",
        "created_at": T0 - dt.timedelta(days=1),
        "updated_at": T0,
        "last_interaction_at": T0,
    }
    row.update(fields)
    return record_message(LEAD, row, processado_em=processado_em)


def chat_message(processado_em: dt.datetime = T0, source_position: str = P0, **fields) -> dict:
    """A chat session's message; sessions are ordered by source position (include/entities.py)."""
    row = {
        "id": str(uuid.uuid4()), "lead_id": str(uuid.uuid4()), "session_token": "tok-ç", "user_agent": "Mozilla/5.0",
        "ip_address": "10.0.0.1", "total_messages": 12, "duration_seconds": 300,
        "pages_visited": ["/", "/preços"], "perguntas_feitas": [], "intencao_detectada": "compra à vista",
        "nivel_interesse": "alto", "started_at": T0, "ended_at": None, "is_active": True,
    }
    row.update(fields)
    return {**record_message(CHAT_SESSION, row, processado_em=processado_em), SOURCE_POSITION: source_position}


def evento_message(processado_em: dt.datetime = T0, **fields) -> dict:
    row = {"id": str(uuid.uuid4()), "evento": "clique", "valor": decimal.Decimal("12.5"), "usuario": "ana",
           "occurred_at": T0}
    row.update(fields)
    return record_message(EVENTO, row, processado_em=processado_em)


def as_bytes(value) -> bytes | None:
    """A message dict per the contract, raw text, raw bytes, or None (a null value)."""
    if isinstance(value, dict):
        return encode(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def key_of(value) -> bytes | None:
    """The contract's key (the entity id) when the message has a known entity and an id."""
    if isinstance(value, dict) and value.get("tipo_evento") in BY_TIPO_EVENTO and value.get("id"):
        return message_key(BY_TIPO_EVENTO[value["tipo_evento"]], value)
    return None


def kafka_frame(spark, values: Iterable, partition: int = 0, start_offset: int = 0, topic: str = "eventos"):
    """A batch as the Kafka source delivers it, one row per value."""
    rows = [
        (key_of(value), as_bytes(value), topic, partition, start_offset + number,
         dt.datetime(2024, 5, 1, 15, 0, 0) + dt.timedelta(seconds=number))
        for number, value in enumerate(values)
    ]
    return spark.createDataFrame(rows, KAFKA_SCHEMA)


def produce(settings, topic: str, values: Iterable, key: bytes | None = None) -> list[tuple[int, int]]:
    """Send every value (keyed per the contract, or all with `key`: one partition, in order) and wait for the broker;
    returns (partition, offset) of each."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=20,
                             batch_size=256 * 1024, max_request_size=4 * 1024 * 1024)
    try:
        # A message without an entity id still needs a key: Kafka refuses a record with neither key nor value.
        futures = [producer.send(topic, key=key or key_of(value) or uuid.uuid4().hex.encode(), value=as_bytes(value))
                   for value in values]
        producer.flush(timeout=120)
        return [(metadata.partition, metadata.offset) for metadata in (f.get(timeout=60) for f in futures)]
    finally:
        producer.close()


def with_members(message: dict, **changes) -> str:
    """A message as JSON text with some members replaced (None deletes the member)."""
    body = json.loads(encode(message))
    for name, value in changes.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return json.dumps(body)


def poison_catalog(max_payload_bytes: int) -> list[tuple[str, object, str]]:
    """(name, value, expected reject_reason): every reject kind of spark/validation.py, fresh ids each call.
    `max_payload_bytes` must leave room for the 40,000-byte fields (messages a sink refused before they were
    checked)."""
    from spark.validation import (INVALID_JSON, MISSING_ID, MISSING_REQUIRED, PAYLOAD_TOO_LARGE, TOO_DEEP, TOO_LARGE,
                                  UNKNOWN_TIPO_EVENTO, UNPARSEABLE_TIMESTAMP, UNSTORABLE_TEXT, VERSION_OUT_OF_RANGE,
                                  WRONG_TYPE)

    if max_payload_bytes < 48 * 1024:
        raise ValueError("the catalogue's largest valid-sized messages need max_payload_bytes >= 48 KiB")

    return [
        ("null value", None, INVALID_JSON),
        ("oversized", dict(evento_message(), usuario="x" * max_payload_bytes), PAYLOAD_TOO_LARGE),
        ("not json", '{"id": "abc", ', INVALID_JSON),
        ("json array", "[1, 2, 3]", INVALID_JSON),
        ("json string", '"lead"', INVALID_JSON),
        ("duplicate keys", '{"tipo_evento": "lead", "tipo_evento": "lead"}', INVALID_JSON),
        ("binary", b"\xff\xfe\x00garbage", INVALID_JSON),
        ("no tipo_evento", with_members(lead_message(), tipo_evento=None), UNKNOWN_TIPO_EVENTO),
        ("unknown tipo_evento", with_members(lead_message(), tipo_evento="pedido"), UNKNOWN_TIPO_EVENTO),
        ("numeric tipo_evento", with_members(lead_message(), tipo_evento=7), UNKNOWN_TIPO_EVENTO),
        ("no id", with_members(lead_message(), id=None), MISSING_ID),
        ("null id", dict(lead_message(), id=None), MISSING_ID),
        ("blank id", dict(lead_message(), id="   "), MISSING_ID),
        ("id not a uuid", dict(lead_message(), id="lead-42"), f"{WRONG_TYPE}: id"),
        ("numeric id", with_members(lead_message(), id=42), f"{WRONG_TYPE}: id"),
        ("no version", with_members(lead_message(), updated_at=None), f"{MISSING_REQUIRED}: updated_at"),
        ("no evento name", dict(evento_message(), evento=""), f"{MISSING_REQUIRED}: evento"),
        ("score as text", dict(lead_message(), score_qualificacao="alto"), f"{WRONG_TYPE}: score_qualificacao"),
        ("score as float", dict(lead_message(), score_qualificacao=8.5), f"{WRONG_TYPE}: score_qualificacao"),
        ("score over int", dict(lead_message(), score_qualificacao=2**40), f"{WRONG_TYPE}: score_qualificacao"),
        ("array as text", dict(lead_message(), interesse="imóveis"), f"{WRONG_TYPE}: interesse"),
        ("mixed array", dict(lead_message(), interesse=["a", 1]), f"{WRONG_TYPE}: interesse"),
        ("bool as text", dict(chat_message(), is_active="yes"), f"{WRONG_TYPE}: is_active"),
        ("number as text", dict(lead_message(), nome=123), f"{WRONG_TYPE}: nome"),
        ("valor as text", dict(evento_message(), valor="12,5"), f"{WRONG_TYPE}: valor"),
        ("valor overflow", with_members(evento_message(), valor=1e300), f"{WRONG_TYPE}: valor"),
        ("deleted as text", dict(lead_message(), deleted="true"), f"{WRONG_TYPE}: deleted"),
        ("lead_id not uuid", dict(chat_message(), lead_id="x"), f"{WRONG_TYPE}: lead_id"),
        ("bad date", dict(lead_message(), created_at="ontem"), f"{UNPARSEABLE_TIMESTAMP}: created_at"),
        ("zoneless", dict(lead_message(), updated_at="2024-05-01T12:00:00"), f"{UNPARSEABLE_TIMESTAMP}: updated_at"),
        ("impossible date", dict(chat_message(), started_at="2024-02-30T12:00:00Z"),
         f"{UNPARSEABLE_TIMESTAMP}: started_at"),
        ("epoch number", with_members(lead_message(), created_at=1714560000), f"{WRONG_TYPE}: created_at"),
        ("bad processado_em", dict(lead_message(), processado_em="now"), f"{UNPARSEABLE_TIMESTAMP}: processado_em"),
        ("pre-1970 version", dict(lead_message(), updated_at="1969-12-31T23:59:59Z"),
         f"{VERSION_OUT_OF_RANGE}: updated_at"),
        ("NUL in text", dict(lead_message(), nome="a\x00b"), f"{UNSTORABLE_TEXT}: nome"),
        ("NUL in array", dict(lead_message(), interesse=["a\x00"]), f"{UNSTORABLE_TEXT}: interesse"),
        ("NUL in json", dict(lead_message(), localizacao={"c": "\x00"}), f"{UNSTORABLE_TEXT}: localizacao"),
        ("NUL in event", dict(evento_message(), extra="\x00"), f"{UNSTORABLE_TEXT}: payload"),
        # 2 KB that made Python's json raise RecursionError: every replay of its batch failed the same way.
        ("nested 1000 deep", with_members(lead_message(), localizacao="DEEP").replace('"DEEP"', "[" * 1000 + "]" * 1000),
         TOO_DEEP),
        # Elasticsearch refuses a keyword term over 32,766 bytes: the bulk failed with 400.
        ("40 KB keyword", dict(lead_message(), email="x" * 40_000), f"{TOO_LARGE}: email"),
        ("40 KB array item", dict(lead_message(), interesse=["imóveis", "x" * 40_000]), f"{TOO_LARGE}: interesse"),
        # Would make every later real update of the record stale.
        ("future version", dict(lead_message(), updated_at="9999-12-31T23:59:59Z"),
         f"{VERSION_OUT_OF_RANGE}: updated_at"),
    ]


def driver_jvms(checkpoint_root: Path) -> set[int]:
    """Live driver JVMs (`java ... org.apache.spark.deploy.SparkSubmit ...`) whose arguments name this checkpoint
    root. Not drivers: the launch scripts (bash spark-class, and Spark's launcher JVM, which names SparkSubmit as
    an argument) and a child the driver is forking (the python driver, PySpark's daemon), which shows the
    driver's command line until it execs."""
    found: dict[int, int] = {}  # pid -> parent pid
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if (argv[0].endswith(b"/java") and b"org.apache.spark.deploy.SparkSubmit" in argv
                and b"org.apache.spark.launcher.Main" not in argv and str(checkpoint_root).encode() in argv
                and process_stat(int(entry.name))):
            found[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return {pid for pid, parent in found.items() if parent not in found}
