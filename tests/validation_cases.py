"""Values at and past each logical type's limits (include/entities.py TYPES), and messages carrying them, shared by
the validator's generative unit test and the integration test that loads what passes into both real sinks."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from typing import Any

from include.entities import ENTITIES, SOURCE_POSITION, Entity, Field
from tests.stream_support import chat_message, evento_message, lead_message

BUILDERS = {"lead": lead_message, "chat_session": chat_message, "evento": evento_message}
UTC = dt.timezone.utc
# The validating clock the cases are written against: versions up to it pass, later ones do not.
NEWEST = dt.datetime(2030, 1, 1, tzinfo=UTC)
# The last source position whose LSN the sinks' Elasticsearch version holds (spark/validation.py MAX_POSITION_LSN).
LARGEST_POSITION = "00007FFFFFFFFFFF/FFFFFFFF"
WIDE_CHARACTERS = ("x", "é", "€", "😀")  # 1 to 4 bytes of UTF-8


def exactly(size: int, character: str) -> str:
    """`size` bytes of UTF-8: as many `character`s as fit, then ASCII up to the size."""
    width = len(character.encode("utf-8"))
    return character * (size // width) + "x" * (size % width)


def deep(levels: int, leaf: Any = 1) -> Any:
    """A value nested `levels` deep (0: the leaf), arrays and objects alternating."""
    value = leaf
    for level in range(levels):
        value = [value] if level % 2 else {"n": value}
    return value


def boundary_values(field: Field) -> list:
    """Values of one field's type at its limits, on both sides, plus wrong kinds and unstorable text."""
    rules = field.rules
    unstorable = ["a\x00b", "\ud800"]
    if field.type == "uuid":
        return [str(uuid.uuid4()), str(uuid.uuid4()).upper(), "not-a-uuid", 42, ""]
    if field.type == "keyword":
        return ([exactly(rules.max_bytes, c) for c in WIDE_CHARACTERS] + [largest_accepted(field) + "x", "", " ", 7]
                + unstorable)
    if field.type == "text":
        return ["x" * 100_000, "é" * 20_000, "", [], *unstorable]
    if field.type == "text[]":
        return [[], [None, ""], largest_accepted(field),
                [exactly(rules.max_bytes, "é") + "x"], ["a"] * rules.max_items, ["a"] * (rules.max_items + 1),
                ["a", 1], "a", ["a\x00"]]
    if field.type == "jsonb":
        digits, exponent = rules.max_number_digits, rules.max_number_exponent
        return [{"n": decimal.Decimal(f"1E+{exponent}")}, {"n": decimal.Decimal(f"-1E-{exponent}")},
                {"n": decimal.Decimal(f"1E+{exponent + 1}")}, {"n": decimal.Decimal(f"1E-{exponent + 1}")},
                [10 ** digits - 1, -(10 ** digits - 1)], [10 ** digits], {"n": decimal.Decimal("0." + "1" * digits)},
                {"n": decimal.Decimal("0." + "1" * (digits + 1))}, {"n": decimal.Decimal("-0")},
                {"n": decimal.Decimal("0E-7")}, deep(60), {"": None, "a.b": [True, False, "ç"]}, "texto", 1.5,
                {"s": "\x00"}, {"\ud800": 1}]
    if field.type == "integer":
        low, high = rules.value_range.start, rules.value_range.stop - 1
        return [low, high, low - 1, high + 1, 0, True, decimal.Decimal("1.5"), "1"]
    if field.type == "numeric":
        integer_digits = rules.precision - rules.scale
        largest = decimal.Decimal(10 ** integer_digits) - decimal.Decimal(1).scaleb(-rules.scale)
        return [largest, -largest, decimal.Decimal(10 ** integer_digits), decimal.Decimal("0.0000000005"),
                decimal.Decimal("1E-400"), decimal.Decimal("1E+400"), decimal.Decimal("-0"), 0, "1"]
    if field.type == "boolean":
        return [True, False, 0, "true"]
    if field.type == "source_position":
        return ["0000000016B37480/00000003", LARGEST_POSITION, "0000800000000000/00000000",
                "0000000016b37480/00000003", "16B37480/3", "0000000016B37480", "", 42, None]
    if field.type == "timestamptz":
        return ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "1970-01-01T00:00:00Z",
                "1969-12-31T23:59:59.999999Z", "0001-01-01T00:00:00+01:00", "2024-05-01 12:00:00-03",
                "2024-02-30T00:00:00Z", NEWEST.isoformat(), (NEWEST + dt.timedelta(microseconds=1)).isoformat(), 0]
    raise ValueError(f"no boundary values for type {field.type!r}")


def largest_accepted(field: Field) -> Any:
    """A keyword at its byte limit in 4-byte characters; a text[] of such items, one per character width."""
    size = field.rules.max_bytes
    return [exactly(size, c) for c in WIDE_CHARACTERS] if field.type == "text[]" else exactly(size, "😀")


def to_json(value: Any, ascii_only: bool = True) -> str:
    """JSON text of a test value; decimals as their exact digits (json.dumps has no form for them)."""
    try:
        return json.dumps(value, ensure_ascii=ascii_only, allow_nan=False)
    except TypeError:  # a decimal or a timestamp somewhere in it
        pass
    if value is None or isinstance(value, (bool, int, str)):
        return json.dumps(value, ensure_ascii=ascii_only)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dt.datetime):
        return json.dumps(value.isoformat())
    if isinstance(value, list):
        return "[" + ",".join(to_json(item, ascii_only) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(key, ensure_ascii=ascii_only)}:{to_json(item, ascii_only)}"
                              for key, item in value.items()) + "}"
    raise TypeError(f"no JSON for {type(value).__name__}")


def message_with(entity: Entity, changes: dict, ascii_only: bool = True) -> bytes:
    """A valid message of the entity (fresh id) with some members replaced, as the bytes Kafka would carry."""
    message = BUILDERS[entity.name]()
    message.update(changes)
    return to_json(message, ascii_only).encode("utf-8", "surrogatepass")


def boundary_messages() -> list[bytes]:
    """For every entity, every field and the envelope's timestamp: one message per boundary value; and one message
    per entity with every field at once at its largest accepted value."""
    messages = []
    for entity in ENTITIES:
        fields = entity.fields + tuple(c for c in entity.sink_columns if c.name in ("processado_em", SOURCE_POSITION))
        for field in fields:
            messages.extend(message_with(entity, {field.name: value}) for value in boundary_values(field))
        largest = {field.name: largest_accepted(field) for field in entity.fields if field.type in ("keyword", "text[]")}
        largest[entity.order_column] = NEWEST.isoformat() if entity.version_column else LARGEST_POSITION
        messages.append(message_with(entity, largest, ascii_only=False))
    return messages
