"""Encoding a page that the Postgres source pre-formatted, with msgspec instead of the contract's row encoder.

The source's `encoded` query (include/sql/extract_page.sql) hands each value over in the form the contract's
encoder gives it: uuids as their canonical text, jsonb as its JSON text, timestamps as `datetime.isoformat()`
writes them. What is left is putting the values under their names, adding the envelope and writing JSON,
which msgspec does in C. Building uuid, datetime and jsonb objects in the driver and encoding them with the
contract's per-value `default` hook cost about eight times the client CPU per lead (63 us against 8 us).

The message is the contract's message: same fields, order and values (msgspec writes no spaces between
tokens). When a row cannot be written exactly as the contract would write it, `encode_rows` returns None and
the whole page goes the row-by-row way, so dead letters and their reasons come from one place.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache

import msgspec

from include.contract import PROCESSADO_EM, TIPO_EVENTO
from include.entities import TYPES, Entity

# Logical types the encoded query casts to text: their text is the contract's value (a JSON string for uuid,
# JSON to write verbatim for jsonb).
TEXT_TYPES = tuple(name for name, rules in TYPES.items() if rules.extract_as_text)
# The contract's encoder parses jsonb into Python objects first: a number with 309 or more integer digits
# becomes an infinite float there, and the row a dead letter. Only a JSON text that long can hold one.
_HUGE_NUMBER = re.compile(r"\d{309}")
# The instants whose isoformat() the encoded query writes: from the first year in which no time zone's offset
# has seconds any more (the last, Africa/Monrovia's -00:44:30, ended in January 1972; isoformat writes them,
# to_char cannot), to datetime's last year, a day inside it so that no offset moves a value past it.
EARLIEST = dt.datetime(1973, 1, 1, tzinfo=dt.timezone.utc)
LATEST = dt.datetime.max.replace(tzinfo=dt.timezone.utc) - dt.timedelta(days=1)
_ENCODER = msgspec.json.Encoder()


def can_encode(entity: Entity) -> bool:
    return all(f.rules.extract_fast_path for f in entity.fields)


@lru_cache(maxsize=None)
def _message_type(entity: Entity) -> type[msgspec.Struct]:
    # A Struct is built and written in C, in field order: the contract's fields, then the envelope.
    return msgspec.defstruct(f"{entity.name}_message", [*entity.field_names, TIPO_EVENTO, PROCESSADO_EM])


def encode_rows(entity: Entity, rows: list[tuple], processado_em: dt.datetime) -> list[tuple[bytes, bytes]] | None:
    """(key, value) pairs for rows of the encoded query: `(encodable, *values)`, values in the registry's field
    order. None when a row needs the row-by-row path: not `encodable` (a timestamp isoformat writes
    differently), a required field NULL, or a jsonb value the contract's encoder would reject."""
    names = entity.field_names
    key = names.index(entity.key)
    # +1: the row's first column is its `encodable` flag.
    required = [names.index(name) + 1 for name in entity.required_fields]
    raw_json = [i for i, f in enumerate(entity.fields) if f.type == "jsonb"]
    message_type, encode, raw = _message_type(entity), _ENCODER.encode, msgspec.Raw
    envelope = (entity.tipo_evento, processado_em.isoformat())
    messages = []
    for row in rows:
        if not row[0]:
            return None
        for i in required:
            if row[i] is None:
                return None
        values = row[1:]
        if raw_json:
            values = list(values)
            for i in raw_json:
                text = values[i]
                if text is not None:
                    if len(text) >= 309 and _HUGE_NUMBER.search(text):
                        return None
                    values[i] = raw(text)
        messages.append((values[key].encode(), encode(message_type(*values, *envelope))))
    return messages


def last_version_and_key(entity: Entity, rows: list[tuple]) -> tuple[dt.datetime, str]:
    """The version and key of the last of the encoded query's rows (all of them encodable)."""
    last, names = rows[-1], entity.field_names
    # +1: the flag column.
    return dt.datetime.fromisoformat(last[names.index(entity.version_column) + 1]), last[names.index(entity.key) + 1]
