"""Validation of one message of topic `eventos`: its bytes in, a valid row of one entity or a reject out.

Plain Python, no Spark: spark/transforms.py applies it to every row of a micro-batch (mapInArrow, on the
executors), and tests call it directly. Each field is checked against the entity registry and its type's row in
`include.entities.TYPES`: its JSON kind (a number is not a string), its range (an int column holds 32 bits), its
format (UUIDs, ISO-8601 timestamps with an offset), its size (what both sinks accept). A message is rejected with
the first failing check, as its reason:

    payload_too_large             value longer than the configured limit (not parsed at all)
    too_deep                      arrays and objects nested deeper than MAX_DEPTH (counted before parsing)
    invalid_json                  null value, not UTF-8, not JSON, JSON that is not an object, a duplicate key,
                                  an integer of more than 4,300 digits (Python's limit)
    unknown_tipo_evento           tipo_evento absent, not a string, or not in the registry
    missing_id                    the key absent, null or blank
    missing_required: <field>     a required field (the version column, ...) absent, null or blank
    wrong_type: <field>           the JSON kind, range or format does not fit the field (includes `deleted`)
    too_large: <field>            over its type's limit: a keyword (or a text[] item) over its bytes, a text[] over
                                  its items, a number in a jsonb value (or an event's payload) over its digits or
                                  exponent
    unparseable_timestamp: <f>    a timestamp string that is not ISO-8601 with an offset
    version_out_of_range: <f>     a version before 1970 (Elasticsearch's external versions must be >= 0) or later
                                  than the validating clock plus the allowed skew (it would make every real update
                                  of the record stale); a source position whose LSN is 2^47 or more (its
                                  Elasticsearch version, LSN << 16 plus the index, would not fit 63 bits)
    unstorable_text: <field>      a NUL character or a lone surrogate, which PostgreSQL text and jsonb cannot hold

spark/transforms.py adds one more: `validator_error: <ExceptionType>`, a message on which this module raised (a bug
here, counted on its own by the status report), so no message can fail a batch.

Fields are checked in the registry's order, then the sink's columns; within a field: presence, blankness (for
required strings), kind, size, then content. Tombstones (`deleted: true`) need only the key and the version column
(or the source position, for an entity ordered by it); their other fields are ignored. Members the registry does not name are ignored (events keep them in `payload`).
Numbers are parsed as exact decimals, so a jsonb member or an event's payload keeps every digit it was sent with.
Nothing here recurses on the message: the depth is bounded before parsing, and JSON values are walked iteratively.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from include.contract import DEFAULT_MAX_VERSION_SKEW_SECONDS, DELETED, PROCESSADO_EM, TIPO_EVENTO, VALIDATOR_ERROR
from include.entities import BY_TIPO_EVENTO, SOURCE_POSITION, TYPES, Entity, Field, FieldType

PAYLOAD = "payload"  # sink column of entities that keep the whole message (eventos_raw)

PAYLOAD_TOO_LARGE = "payload_too_large"
TOO_DEEP = "too_deep"
INVALID_JSON = "invalid_json"
UNKNOWN_TIPO_EVENTO = "unknown_tipo_evento"
MISSING_ID = "missing_id"
MISSING_REQUIRED = "missing_required"
WRONG_TYPE = "wrong_type"
TOO_LARGE = "too_large"
UNPARSEABLE_TIMESTAMP = "unparseable_timestamp"
VERSION_OUT_OF_RANGE = "version_out_of_range"
UNSTORABLE_TEXT = "unstorable_text"
# Every reason's class (the text before ": <field>").
REASONS = (PAYLOAD_TOO_LARGE, TOO_DEEP, INVALID_JSON, UNKNOWN_TIPO_EVENTO, MISSING_ID, MISSING_REQUIRED, WRONG_TYPE,
           TOO_LARGE, UNPARSEABLE_TIMESTAMP, VERSION_OUT_OF_RANGE, UNSTORABLE_TEXT, VALIDATOR_ERROR)

# Deepest nesting of arrays and objects a message may have. Every reader of it recurses per level: Python's json
# raises RecursionError near 1,000, Elasticsearch refuses a document nested over 1,000, Postgres's jsonb parser
# runs out of stack further on. The contract nests 3 deep (localizacao, an event's context); 64 leaves clients room
# and keeps every reader far from its limit, the rendered document included (it adds a level: `payload`).
MAX_DEPTH = 64

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII)
# The contract's form. A time without an offset is refused rather than guessed in some zone.
_ISO_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}(:?\d{2})?)", re.ASCII)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# include/extract/cdc.py source_position: upper case, so that text order is commit order.
_SOURCE_POSITION = re.compile(r"[0-9A-F]{16}/[0-9A-F]{8}", re.ASCII)
# The sinks' Elasticsearch version of a position shifts its LSN left by 16 bits (include/sql/sink_order.sql).
MAX_POSITION_LSN = 2 ** 47
# A JSON string (to its closing quote, or to the end when there is none: linear on any input), or a bracket.
# UTF-8 never puts these ASCII bytes inside a multi-byte character, so the bytes can be scanned undecoded.
_STRING_OR_BRACKET = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)
_OPENING = frozenset(b"[{")
_CLOSING = frozenset(b"]}")
_STRING_TYPES = ("uuid", "text", "keyword")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_JSONB = TYPES["jsonb"]
_INT_BOUND = 10 ** _JSONB.max_number_digits
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


class _LongNumber(Exception):
    """A number over the jsonb limits: the message is decoded again, and its jsonb values walked for it."""


def _bounded_decimal(text: str) -> decimal.Decimal:
    number = decimal.Decimal(text)
    # Without an exponent, at most 100 characters stay within the limits: only the others are worked out.
    if (len(text) > _JSONB.max_number_digits or "e" in text or "E" in text) and not _number_fits(number):
        raise _LongNumber
    return number


def _bounded_int(text: str) -> int:
    if len(text) - text.startswith("-") > _JSONB.max_number_digits:
        raise _LongNumber
    return int(text)


_DECODER_OPTIONS = dict(object_pairs_hook=_unique_members, parse_constant=_no_constant)
# The usual decoder: it stops at a number over the jsonb limits, so that without one no jsonb value needs walking.
_DECODER = json.JSONDecoder(parse_float=_bounded_decimal, parse_int=_bounded_int, **_DECODER_OPTIONS)
# For a message with one: that number may sit in a typed field or an ignored member, which have their own rules.
_LONG_NUMBER_DECODER = json.JSONDecoder(parse_float=decimal.Decimal, **_DECODER_OPTIONS)
_ENCODER = msgspec.json.Encoder(decimal_format="number")


def render(document: dict) -> str:
    """A document as one line of JSON: decimals as numbers, timestamps as RFC 3339 in UTC."""
    return _ENCODER.encode(document).decode("utf-8")


def nesting_exceeds(value: bytes, limit: int = MAX_DEPTH) -> bool:
    """Do arrays and objects outside strings nest deeper than `limit` anywhere in this (possibly invalid) JSON?"""
    if value.count(b"[") + value.count(b"{") <= limit:
        return False  # it cannot nest deeper than it opens: nearly every message ends here
    depth = 0
    for token in _STRING_OR_BRACKET.finditer(value):
        first = value[token.start()]
        if first in _OPENING:
            depth += 1
            if depth > limit:
                return True
        elif first in _CLOSING:
            depth -= 1
    return False


def _number_fits(number: int | decimal.Decimal) -> bool:
    """Within the jsonb limits: significant digits and the decimal exponent either way."""
    if type(number) is int:
        return -_INT_BOUND < number < _INT_BOUND
    return (number.is_finite() and len(number.as_tuple().digits) <= _JSONB.max_number_digits
            and abs(number.adjusted()) <= _JSONB.max_number_exponent)


def _json_problem(value: Any, escapes: bool) -> str | None:
    """UNSTORABLE_TEXT when a string or key inside a JSON value holds a NUL or a lone surrogate, TOO_LARGE when a
    number in it is over the jsonb limits, else None. Walked with a stack: the value may be deep. The decoder gives
    exact types (str, dict, list, int, Decimal, bool, None)."""
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is str:
            if escapes and _UNSTORABLE.search(item):
                return UNSTORABLE_TEXT
        elif kind is dict:
            if escapes and any(_UNSTORABLE.search(key) for key in item):
                return UNSTORABLE_TEXT
            pending.extend(item.values())
        elif kind is list:
            pending.extend(item)
        elif (kind is int or kind is decimal.Decimal) and not _number_fits(item):
            return TOO_LARGE
    return None


def _too_many_bytes(text: str, limit: int) -> bool:
    # UTF-8 takes at most 4 bytes a character (3 for a lone surrogate, refused later), so short text is not encoded.
    return len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit


def _numeric(value: Any, rules: FieldType) -> decimal.Decimal | None:
    """The value as decimal(precision, scale), rounded half up; None when it is not a number or does not fit."""
    if isinstance(value, bool) or not isinstance(value, (int, decimal.Decimal)):
        return None
    try:
        rounded = decimal.Decimal(value).quantize(decimal.Decimal(1).scaleb(-rules.scale), context=_DECIMAL_CONTEXT)
    except decimal.InvalidOperation:  # more digits than the context holds: far outside the range anyway
        return None
    return rounded if rounded.adjusted() < rules.precision - rules.scale else None


def _timestamp(text: str) -> dt.datetime | None:
    if not _ISO_TIMESTAMP.fullmatch(text):
        return None
    try:
        return dt.datetime.fromisoformat(text).astimezone(dt.timezone.utc)
    except (ValueError, OverflowError):  # 2024-02-30, or an offset that moves it past year 9999
        return None


def check_field(field: Field, members: dict, required: bool, is_key: bool = False, escapes: bool = True,
                long_numbers: bool = True) -> tuple[Any, str | None]:
    """(value in the field's type, reason it is rejected or None). `escapes`: the message text holds a \\u escape,
    the only way a parsed string can carry a NUL or a lone surrogate; `long_numbers`: it holds a number over the
    jsonb limits (the decoder tells). Without them those checks are skipped."""
    name = field.name
    value = members.get(name)
    if value is None:  # absent, or JSON null
        return None, ((MISSING_ID if is_key else f"{MISSING_REQUIRED}: {name}") if required else None)
    wrong = f"{WRONG_TYPE}: {name}"
    kind = field.type
    rules = field.rules
    if kind in _STRING_TYPES:
        if not isinstance(value, str):
            return None, wrong
        if required and value.strip(" ") == "":
            return None, MISSING_ID if is_key else f"{MISSING_REQUIRED}: {name}"
        if kind == "uuid":
            if not _UUID.fullmatch(value):
                return None, wrong
            value = value.lower()
        elif rules.max_bytes is not None and _too_many_bytes(value, rules.max_bytes):
            return None, f"{TOO_LARGE}: {name}"
    elif kind == "text[]":
        if not isinstance(value, list) or not all(item is None or isinstance(item, str) for item in value):
            return None, wrong
        if len(value) > rules.max_items or any(item is not None and _too_many_bytes(item, rules.max_bytes)
                                               for item in value):
            return None, f"{TOO_LARGE}: {name}"
    elif kind == "jsonb":
        problem = _json_problem(value, escapes) if escapes or long_numbers else None
        return (None, f"{problem}: {name}") if problem else (value, None)
    elif kind == "integer":
        if type(value) is not int or value not in rules.value_range:
            return None, wrong
    elif kind == "numeric":
        value = _numeric(value, rules)
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
    if escapes and isinstance(value, (str, list)) and _json_problem(value, escapes):
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
    def version(self) -> dt.datetime | None:
        """The version column's value; None for an entity ordered by source position."""
        return self.row.get(self.entity.version_column) if self.entity.version_column else None

    @property
    def position(self) -> str | None:
        """The source position of an entity ordered by it; None for one ordered by its version column."""
        return self.row[SOURCE_POSITION] if self.entity.ordered_by_position else None

    @property
    def key(self) -> str:
        return self.row[self.entity.key]


def _field_plan(entity: Entity) -> tuple[tuple[Field, bool, bool, bool, bool], ...]:
    """Per field: (field, required, is_key, is_version, checked in a tombstone)."""
    required = entity.required_fields
    return tuple((f, f.name in required, f.name == entity.key, f.name == entity.version_column,
                  f.name in (entity.key, entity.version_column)) for f in entity.fields)


# Worked out once, by tipo_evento (a lookup per message; hashing an Entity would hash every field).
_PLANS = {tipo: (entity, _field_plan(entity)) for tipo, entity in BY_TIPO_EVENTO.items()}


def check_source_position(members: dict) -> tuple[str | None, str | None]:
    """(the message's source position, reason it is rejected or None): required, in cdc's form, its LSN in range."""
    value = members.get(SOURCE_POSITION)
    if value is None:
        return None, f"{MISSING_REQUIRED}: {SOURCE_POSITION}"
    if not isinstance(value, str) or not _SOURCE_POSITION.fullmatch(value):
        return None, f"{WRONG_TYPE}: {SOURCE_POSITION}"
    if int(value[:16], 16) >= MAX_POSITION_LSN:
        return None, f"{VERSION_OUT_OF_RANGE}: {SOURCE_POSITION}"
    return value, None


def _reject(reason: str, entity: Entity | None = None) -> Validated:
    return Validated(entity, reason)


def latest_version(max_version_skew_seconds: float = DEFAULT_MAX_VERSION_SKEW_SECONDS) -> dt.datetime:
    """The latest version accepted now: this machine's clock plus the allowed skew.

    The wall clock where the message is validated, read once per batch: the versions come from the sources' clocks,
    which the skew allows to run ahead of this one. A replay runs later, so what was accepted stays accepted; a
    message refused for a future version is a dead letter, and its record's next real update still lands."""
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=max_version_skew_seconds)


def validate(value: bytes | None, max_payload_bytes: int, *, newest_version: dt.datetime | None = None) -> Validated:
    """Validate one Kafka value. Versions later than `newest_version` are refused (default: latest_version())."""
    if value is None:
        return _reject(INVALID_JSON)
    if len(value) > max_payload_bytes:
        return _reject(PAYLOAD_TOO_LARGE)
    if nesting_exceeds(value):
        return _reject(TOO_DEEP)
    long_numbers = False
    try:
        text = value.decode("utf-8")
        try:
            message = _DECODER.decode(text)
        except _LongNumber:
            long_numbers = True
            message = _LONG_NUMBER_DECODER.decode(text)
    except ValueError:  # UnicodeDecodeError, JSONDecodeError, a duplicate key, a huge integer: all ValueErrors
        return _reject(INVALID_JSON)
    if not isinstance(message, dict):
        return _reject(INVALID_JSON)
    tipo = message.get(TIPO_EVENTO)
    entity, plan = _PLANS.get(tipo, (None, None)) if isinstance(tipo, str) else (None, None)
    if entity is None:
        return _reject(UNKNOWN_TIPO_EVENTO)
    deleted = message.get(DELETED)
    if deleted is not None and type(deleted) is not bool:
        return _reject(f"{WRONG_TYPE}: {DELETED}", entity)
    deleted = deleted is True
    escapes = "\\u" in text
    newest = latest_version() if newest_version is None else newest_version
    row = {}
    for field, required, is_key, is_version, in_tombstone in plan:
        if deleted and not in_tombstone:
            row[field.name] = None
            continue
        checked, reason = check_field(field, message, required, is_key=is_key, escapes=escapes,
                                      long_numbers=long_numbers)
        if reason is None and is_version and not _EPOCH <= checked <= newest:
            reason = f"{VERSION_OUT_OF_RANGE}: {field.name}"
        if reason is not None:
            return _reject(reason, entity)
        row[field.name] = checked
    for column in entity.sink_columns:
        if column.name == PROCESSADO_EM:
            checked, reason = check_field(_PROCESSADO_EM_FIELD, message, required=False)
        elif column.name == SOURCE_POSITION:
            checked, reason = check_source_position(message)
        elif column.name == PAYLOAD:
            checked, reason = check_field(column, {PAYLOAD: message}, required=False, escapes=escapes,
                                          long_numbers=long_numbers)
        else:
            raise ValueError(f"entity {entity.name}: no value for sink column {column.name}")
        if reason is not None:
            return _reject(reason, entity)
        row[column.name] = checked
    return Validated(entity, deleted=deleted, row=row)
