"""Validation of one message of topic `eventos`: its bytes in, a valid row of one entity or a reject out.

Plain Python, no Spark: spark/transforms.py applies it to every row of a micro-batch (mapInArrow, on the
executors), and tests call it directly. Each field is checked against the entity registry: its JSON kind (a
number is not a string), its range (an int column holds 32 bits), its format (UUIDs, ISO-8601 timestamps with an
offset). A message is rejected with the first failing check, as its reason:

    payload_too_large             value longer than the configured limit (not parsed at all)
    invalid_json                  null value, not UTF-8, not JSON, JSON that is not an object, a duplicate key
    unknown_tipo_evento           tipo_evento absent, not a string, or not in the registry
    missing_id                    the key absent, null or blank
    missing_required: <field>     a required field (the version column, ...) absent, null or blank
    wrong_type: <field>           the JSON kind, range or format does not fit the field (includes `deleted`)
    unparseable_timestamp: <f>    a timestamp string that is not ISO-8601 with an offset
    version_out_of_range: <f>     a version before 1970: Elasticsearch's external versions must be >= 0
    unstorable_text: <field>      a NUL character or a lone surrogate, which PostgreSQL text and jsonb cannot hold

Fields are checked in the registry's order, then the sink's columns; within a field: presence, blankness (for
required strings), kind, then content. Tombstones (`deleted: true`) need only the key and the version column;
their other fields are ignored. Members the registry does not name are ignored (events keep them in `payload`).
Numbers are parsed as exact decimals, so a jsonb member or an event's payload keeps every digit it was sent with.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import msgspec

from include.contract import DELETED, PROCESSADO_EM, TIPO_EVENTO
from include.entities import BY_TIPO_EVENTO, Entity, Field

PAYLOAD = "payload"  # sink column of entities that keep the whole message (eventos_raw)

PAYLOAD_TOO_LARGE = "payload_too_large"
INVALID_JSON = "invalid_json"
UNKNOWN_TIPO_EVENTO = "unknown_tipo_evento"
MISSING_ID = "missing_id"
MISSING_REQUIRED = "missing_required"
WRONG_TYPE = "wrong_type"
UNPARSEABLE_TIMESTAMP = "unparseable_timestamp"
VERSION_OUT_OF_RANGE = "version_out_of_range"
UNSTORABLE_TEXT = "unstorable_text"

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII)
# The contract's form. A time without an offset is refused rather than guessed in some zone.
_ISO_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}(:?\d{2})?)", re.ASCII)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_STRING_TYPES = ("uuid", "text", "keyword")
_INT32 = range(-2**31, 2**31)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# numeric columns are decimal(38,9), as Spark and Elasticsearch read them: 9 digits after the point, 29 before.
_NUMERIC_SCALE = decimal.Decimal("1e-9")
_NUMERIC_INTEGER_DIGITS = 29
_DECIMAL_CONTEXT = decimal.Context(prec=80, rounding=decimal.ROUND_HALF_UP)
_PROCESSADO_EM_FIELD = Field(PROCESSADO_EM, "timestamptz")


class _DuplicateKey(ValueError):
    pass


def _unique_members(pairs: list[tuple[str, Any]]) -> dict:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise _DuplicateKey("duplicate key")  # which value is meant is not for the pipeline to guess
    return members


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_members, parse_float=decimal.Decimal,
                            parse_constant=_no_constant)
_ENCODER = msgspec.json.Encoder(decimal_format="number")


def render(document: dict) -> str:
    """A document as one line of JSON: decimals as numbers, timestamps as RFC 3339 in UTC."""
    return _ENCODER.encode(document).decode("utf-8")


def _unstorable(value: Any) -> bool:
    """A string, or any string or key inside a JSON value, holds a NUL or a lone surrogate."""
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is not None
    if isinstance(value, list):
        return any(_unstorable(item) for item in value)
    if isinstance(value, dict):
        return any(_unstorable(key) or _unstorable(item) for key, item in value.items())
    return False


def _numeric(value: Any) -> decimal.Decimal | None:
    """The value as decimal(38,9), rounded half up; None when it is not a number or does not fit."""
    if isinstance(value, bool) or not isinstance(value, (int, decimal.Decimal)):
        return None
    try:
        rounded = decimal.Decimal(value).quantize(_NUMERIC_SCALE, context=_DECIMAL_CONTEXT)
    except decimal.InvalidOperation:  # more digits than the context holds: far outside the range anyway
        return None
    return rounded if rounded.adjusted() < _NUMERIC_INTEGER_DIGITS else None


def _timestamp(text: str) -> dt.datetime | None:
    if not _ISO_TIMESTAMP.fullmatch(text):
        return None
    try:
        return dt.datetime.fromisoformat(text).astimezone(dt.timezone.utc)
    except (ValueError, OverflowError):  # 2024-02-30, or an offset that moves it past year 9999
        return None


def check_field(field: Field, members: dict, required: bool, is_key: bool = False,
                escapes: bool = True) -> tuple[Any, str | None]:
    """(value in the field's type, reason it is rejected or None). `escapes`: the message text holds a \\u escape,
    the only way a parsed string can carry a NUL or a lone surrogate (so without one that check is skipped)."""
    name = field.name
    value = members.get(name)
    if value is None:  # absent, or JSON null
        return None, ((MISSING_ID if is_key else f"{MISSING_REQUIRED}: {name}") if required else None)
    wrong = f"{WRONG_TYPE}: {name}"
    kind = field.type
    if kind in _STRING_TYPES:
        if not isinstance(value, str):
            return None, wrong
        if required and value.strip(" ") == "":
            return None, MISSING_ID if is_key else f"{MISSING_REQUIRED}: {name}"
        if kind == "uuid":
            if not _UUID.fullmatch(value):
                return None, wrong
            value = value.lower()
    elif kind == "text[]":
        if not isinstance(value, list) or not all(item is None or isinstance(item, str) for item in value):
            return None, wrong
    elif kind == "jsonb":
        pass  # any JSON value
    elif kind == "integer":
        if type(value) is not int or value not in _INT32:
            return None, wrong
    elif kind == "numeric":
        value = _numeric(value)
        if value is None:
            return None, wrong
    elif kind == "boolean":
        if type(value) is not bool:
            return None, wrong
    elif kind == "timestamptz":
        if not isinstance(value, str):
            return None, wrong
        value = _timestamp(value)
        if value is None:
            return None, f"{UNPARSEABLE_TIMESTAMP}: {name}"
        return value, None
    else:
        raise ValueError(f"field {name}: no check for logical type {kind!r}")
    if escapes and _unstorable(value):
        return None, f"{UNSTORABLE_TEXT}: {name}"
    return value, None


@dataclass(frozen=True)
class Validated:
    """A message's verdict. Valid: `entity`, `deleted` and `row` (every column of the entity's table, in order).
    Rejected: `reason`, and `entity` when its tipo_evento named one."""

    entity: Entity | None
    reason: str | None = None
    deleted: bool = False
    row: dict | None = None

    @property
    def version(self) -> dt.datetime:
        return self.row[self.entity.version_column]

    @property
    def key(self) -> str:
        return self.row[self.entity.key]


@lru_cache(maxsize=None)
def _field_plan(entity: Entity) -> tuple[tuple[Field, bool, bool, bool, bool], ...]:
    """Per field, worked out once per entity: (field, required, is_key, is_version, checked in a tombstone)."""
    required = entity.required_fields
    return tuple((f, f.name in required, f.name == entity.key, f.name == entity.version_column,
                  f.name in (entity.key, entity.version_column)) for f in entity.fields)


def _reject(reason: str, entity: Entity | None = None) -> Validated:
    return Validated(entity, reason)


def validate(value: bytes | None, max_payload_bytes: int) -> Validated:
    """Validate one Kafka value."""
    if value is None:
        return _reject(INVALID_JSON)
    if len(value) > max_payload_bytes:
        return _reject(PAYLOAD_TOO_LARGE)
    try:
        text = value.decode("utf-8")
        message = _DECODER.decode(text)
    except ValueError:  # UnicodeDecodeError, JSONDecodeError and a duplicate key are all ValueErrors
        return _reject(INVALID_JSON)
    if not isinstance(message, dict):
        return _reject(INVALID_JSON)
    tipo = message.get(TIPO_EVENTO)
    entity = BY_TIPO_EVENTO.get(tipo) if isinstance(tipo, str) else None
    if entity is None:
        return _reject(UNKNOWN_TIPO_EVENTO)
    deleted = message.get(DELETED)
    if deleted is not None and type(deleted) is not bool:
        return _reject(f"{WRONG_TYPE}: {DELETED}", entity)
    deleted = deleted is True
    escapes = "\\u" in text
    row = {}
    for field, required, is_key, is_version, in_tombstone in _field_plan(entity):
        if deleted and not in_tombstone:
            row[field.name] = None
            continue
        checked, reason = check_field(field, message, required, is_key=is_key, escapes=escapes)
        if reason is None and is_version and checked < _EPOCH:
            reason = f"{VERSION_OUT_OF_RANGE}: {field.name}"
        if reason is not None:
            return _reject(reason, entity)
        row[field.name] = checked
    for column in entity.sink_columns:
        if column.name == PROCESSADO_EM:
            checked, reason = check_field(_PROCESSADO_EM_FIELD, message, required=False, escapes=escapes)
        elif column.name == PAYLOAD:
            checked, reason = message, (f"{UNSTORABLE_TEXT}: {PAYLOAD}" if escapes and _unstorable(message) else None)
        else:
            raise ValueError(f"entity {entity.name}: no value for sink column {column.name}")
        if reason is not None:
            return _reject(reason, entity)
        row[column.name] = checked
    return Validated(entity, deleted=deleted, row=row)
