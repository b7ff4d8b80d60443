"""Encoding a page that the Postgres source pre-formatted (or the cdc's changes, whose values come as text), with
msgspec instead of the contract's row encoder.

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
from include.entities import SOURCE_POSITION, TYPES, Entity
from include.extract.pgoutput import UNCHANGED, Relation, RowLoader

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


class _Writer:
    """One entity's messages from values in the encoded query's form (registry field order), written by msgspec:
    the contract's fields, then the envelope (and the cdc's source position when `positioned`)."""

    def __init__(self, entity: Entity, positioned: bool):
        names = entity.field_names
        self.key = names.index(entity.key)
        self.required = [names.index(name) for name in entity.required_fields]
        self.raw_json = [i for i, f in enumerate(entity.fields) if f.type == "jsonb"]
        envelope = [TIPO_EVENTO, PROCESSADO_EM, *([SOURCE_POSITION] if positioned else [])]
        # A Struct is built and written in C, in field order.
        self.message_type = msgspec.defstruct(f"{entity.name}_message", [*names, *envelope])

    def __call__(self, values, envelope: tuple) -> tuple[bytes, bytes] | None:
        """The (key, value) pair; None when a required field is NULL or a jsonb value is one the contract's encoder
        would reject."""
        for i in self.required:
            if values[i] is None:
                return None
        if self.raw_json:
            values = list(values)
            for i in self.raw_json:
                text = values[i]
                if text is not None:
                    if len(text) >= 309 and _HUGE_NUMBER.search(text):
                        return None
                    values[i] = msgspec.Raw(text)
        return values[self.key].encode(), _ENCODER.encode(self.message_type(*values, *envelope))


@lru_cache(maxsize=None)
def _writer(entity: Entity, positioned: bool = False) -> _Writer:
    return _Writer(entity, positioned)


def encode_rows(entity: Entity, rows: list[tuple], processado_em: dt.datetime) -> list[tuple[bytes, bytes]] | None:
    """(key, value) pairs for rows of the encoded query: `(encodable, *values)`, values in the registry's field
    order. None when a row needs the row-by-row path: not `encodable` (a timestamp isoformat writes
    differently), a required field NULL, or a jsonb value the contract's encoder would reject."""
    write = _writer(entity)
    envelope = (entity.tipo_evento, processado_em.isoformat())
    messages = []
    for row in rows:
        # The row's first column is its `encodable` flag.
        message = write(row[1:], envelope) if row[0] else None
        if message is None:
            return None
        messages.append(message)
    return messages


class ChangeEncoder:
    """The cdc's inserts and updates, from pgoutput's text values (the columns' output functions, as the encoded
    query's casts to text give them) to the contract's message with its source position, written by msgspec.

    uuid and jsonb text is the contract's value already; every other value goes through the same psycopg loader
    as the row-by-row path (RowLoader), and a timestamp is then written by the same isoformat(), so the message
    is the one the row-by-row path writes. `encode` returns None where that path must decide (an entity of a type
    the fast path cannot write, a registry field that is no column of the table or has another column type, an
    unchanged TOASTed value, a required field NULL, a jsonb number the contract rejects): its dead letters and
    errors then come from one place."""

    def __init__(self, loader: RowLoader):
        self.loader = loader
        self._oids = {name: loader.type_oid(TYPES[name].pg_type) for name in ("uuid", "jsonb", "timestamptz")}
        # By the Relation message's identity: a new one (the table was altered) gets a new plan.
        self._plans: dict[int, tuple[Relation, list | None]] = {}

    def _plan(self, entity: Entity, relation: Relation) -> list | None:
        """Per registry field: the column's index in the change and the function giving its encoded value."""
        if not can_encode(entity):
            return None
        columns = {column.name: (index, column.type_oid) for index, column in enumerate(relation.columns)}
        plan = []
        for field in entity.fields:
            if field.name not in columns:
                return None
            index, type_oid = columns[field.name]
            expected = self._oids.get(field.type)
            if expected is not None and type_oid != expected:
                return None
            if field.rules.extract_as_text:
                plan.append((index, bytes.decode))
            elif field.type == "timestamptz":
                load = self.loader.loader(type_oid).load
                plan.append((index, lambda text, load=load: load(text).isoformat()))
            else:
                plan.append((index, self.loader.loader(type_oid).load))
        return plan

    def encode(self, entity: Entity, relation: Relation, values: tuple, position: str,
               processado_em: dt.datetime) -> tuple[bytes, bytes] | None:
        known = self._plans.get(id(relation))
        if known is None or known[0] is not relation:
            known = self._plans[id(relation)] = (relation, self._plan(entity, relation))
        plan = known[1]
        if plan is None:
            return None
        encoded = []
        for index, convert in plan:
            value = values[index]
            if value is None:
                encoded.append(None)
            elif value is UNCHANGED:
                return None
            else:
                encoded.append(convert(value))
        return _writer(entity, positioned=True)(encoded, (entity.tipo_evento, processado_em.isoformat(), position))


def last_version_and_key(entity: Entity, rows: list[tuple]) -> tuple[dt.datetime, str]:
    """The version and key of the last of the encoded query's rows (all of them encodable)."""
    last, names = rows[-1], entity.field_names
    # +1: the flag column.
    return dt.datetime.fromisoformat(last[names.index(entity.version_column) + 1]), last[names.index(entity.key) + 1]
