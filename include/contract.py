"""The message contract on topic `eventos`, shared by every producer and the streaming job.

A message's key is the entity id (UTF-8), so every version of a record lands in one partition, in order.
Its value is a JSON object: the entity's registry fields, plus `tipo_evento` and `processado_em`.
Timestamps are ISO-8601 with a UTC offset; arrays are JSON arrays; `localizacao` is a JSON object.
A tombstone carries only the key, `deleted: true`, and the deletion's order: its time in the entity's version
column, or its `source_position` for an entity ordered by position (include/entities.py).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from typing import Any, Mapping

from include.entities import Entity

# The largest message value the streaming job accepts (its --max-payload-bytes default); a larger one is its dead
# letter, so the extraction refuses it first (PIPELINE_EXTRACT_MAX_PAYLOAD_BYTES), where the source can be told.
MAX_PAYLOAD_BYTES = 256 * 1024

TIPO_EVENTO = "tipo_evento"
PROCESSADO_EM = "processado_em"
DELETED = "deleted"
# Messages of the cdc extraction carry SOURCE_POSITION, where the change sits in the source's commit order
# (include/extract/cdc.py source_position): a string that sorts as the positions do.
ENVELOPE_FIELDS = (TIPO_EVENTO, PROCESSADO_EM, DELETED)
# How far a version (the entity's version column) may be ahead of the consumer's clock. A version in the future
# would make every real update of its record stale until then; producers' and consumers' clocks differ by seconds.
DEFAULT_MAX_VERSION_SKEW_SECONDS = 300
# The streaming job's byte budget of a micro-batch (--max-bytes-per-trigger): at most this over the payload limit
# offsets per batch, 2,048 with the defaults.
DEFAULT_MAX_BYTES_PER_TRIGGER = 512 * 1024 ** 2
# Dead-letter reason of a message the validator raised on: a bug in the validator, never a bad message, so the
# status report and the data-quality check count it apart.
VALIDATOR_ERROR = "validator_error"


class UnserialisableValue(TypeError):
    """A value in a row has no JSON form in this contract."""


def _json_default(value: Any):
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise UnserialisableValue(f"timestamp without time zone: {value!r}")
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise UnserialisableValue(f"non-finite number: {value!r}")
        return float(value) if value != value.to_integral_value() else int(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise UnserialisableValue(f"{type(value).__name__} is not JSON serialisable: {value!r}")


# allow_nan=False: NaN/Infinity are not JSON and downstream parsers reject them. One encoder for every call:
# json.dumps with options builds a new one each time, a cost the extraction pays per row.
_ENCODER = json.JSONEncoder(default=_json_default, ensure_ascii=False, allow_nan=False)


def encode(message: Mapping[str, Any]) -> bytes:
    try:
        return _ENCODER.encode(message).encode("utf-8")
    except ValueError as error:
        raise UnserialisableValue(str(error)) from error


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def record_message(entity: Entity, row: Mapping[str, Any], processado_em: dt.datetime | None = None) -> dict:
    """A record's message: exactly the registry's fields, then the envelope."""
    message = {name: row.get(name) for name in entity.field_names}
    message[TIPO_EVENTO] = entity.tipo_evento
    message[PROCESSADO_EM] = processado_em or now_utc()
    return message


def tombstone_message(entity: Entity, record_id: Any, deleted_at: dt.datetime | str,
                      processado_em: dt.datetime | None = None) -> dict:
    """`deleted_at`: the deletion's order, a time for a version-ordered entity, a source position otherwise."""
    return {
        entity.key: record_id,
        entity.order_column: deleted_at,
        DELETED: True,
        TIPO_EVENTO: entity.tipo_evento,
        PROCESSADO_EM: processado_em or now_utc(),
    }


def message_key(entity: Entity, message: Mapping[str, Any]) -> bytes:
    return str(message[entity.key]).encode("utf-8")
