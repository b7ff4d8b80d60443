"""Pure transforms of the streaming job: Kafka rows in, validated rows routed per entity and rejects out.

Nothing here touches a service, so tests run every function on tiny literal DataFrames. The input has the Kafka
source's columns (key, value, topic, partition, offset, timestamp); a micro-batch goes through

    checked = batch.transform(with_validation(max_payload_bytes))      # parse once, route, validate
    leads = checked.transform(filter_entity(LEAD)).transform(with_newest_per_id(LEAD))
    dead = checked.transform(to_dead_letters(batch_id))
    documents = leads.transform(to_documents(LEAD))                      # what both sinks load

The value is parsed once, into a VARIANT; every field is then read from it and checked against the entity
registry: its JSON kind (a number is not a string), its range (an int column holds 32 bits), its format (UUIDs,
ISO-8601 timestamps with an offset). A row is rejected with the first failing check, as `reject_reason`:

    payload_too_large             value longer than the configured limit (not parsed at all)
    invalid_json                  null value, not JSON, or JSON that is not an object
    unknown_tipo_evento           tipo_evento absent, not a string, or not in the registry
    missing_id                    the key absent, null or blank
    missing_required: <field>     a required field (the version column, ...) absent, null or blank
    wrong_type: <field>           the JSON kind, range or format does not fit the field (includes `deleted`)
    unparseable_timestamp: <f>    a timestamp string that is not ISO-8601 with an offset
    version_out_of_range: <f>     a version before 1970: Elasticsearch's external versions must be >= 0
    unstorable_text: <field>      a NUL character, which PostgreSQL text and jsonb cannot hold

Tombstones (`deleted: true`) need only the key and the version column; their other fields are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from include.contract import DELETED, PROCESSADO_EM, TIPO_EVENTO
from include.entities import ENTITIES, Entity, Field

KAFKA_META = ("topic", "partition", "offset", "timestamp")
REASON = "reject_reason"
OUTCOME = "outcome"  # the entity's name for a valid row, REJECTED otherwise
REJECTED = "rejected"
RAW_PAYLOAD = "raw_payload"
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

_UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# The contract's form. A time without an offset is refused rather than guessed in some zone.
_ISO_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}(:?\d{2})?)$"
# A \u0000 escape that is not itself an escaped backslash followed by "u0000".
_JSON_NUL_ESCAPE = r"(^|[^\\])(\\\\)*\\u0000"
_NUL = "\x00"
_EPOCH = "1970-01-01 00:00:00"
_OBJECT_TEXT = r"^\s*\{"
_STRING_TYPES = ("uuid", "text", "keyword")
_TEXT_TYPES = _STRING_TYPES + ("timestamptz",)
_PROCESSADO_EM_FIELD = Field(PROCESSADO_EM, "timestamptz")
_JSON = "_json"
# Every top-level member a check reads, and those read as strings.
_MEMBERS = sorted({f.name for e in ENTITIES for f in e.fields} | {TIPO_EVENTO, DELETED, PROCESSADO_EM})
_TEXT_MEMBERS = sorted({f.name for e in ENTITIES for f in e.fields if f.type in _TEXT_TYPES}
                       | {TIPO_EVENTO, PROCESSADO_EM})


@dataclass(frozen=True)
class Member:
    """A top-level member of the message: its VARIANT (SQL null when absent), JSON kind and string value."""

    raw: Column
    kind: Column  # schema_of_variant: STRING, BIGINT, DECIMAL(p,s), DOUBLE, BOOLEAN, ARRAY<...>, OBJECT<...>, VOID
    text: Column  # the value cast to string (meaningful when kind is STRING)

    @classmethod
    def of(cls, raw: Column) -> "Member":
        return cls(raw, F.schema_of_variant(raw), F.try_variant_get(raw, "$", "string"))

    @property
    def present(self) -> Column:
        """The member exists and is not JSON null."""
        return self.raw.isNotNull() & ~F.is_variant_null(self.raw)


@dataclass(frozen=True)
class Checked:
    """A field read from the message: its value in the registry's Spark type, and why it is rejected (or null)."""

    value: Column
    reason: Column


def _reason(code: str, field: str | None = None) -> Column:
    return F.lit(code if field is None else f"{code}: {field}")


def _first_failure(checks: list[tuple[Column, Column]]) -> Column:
    """CASE WHEN failed1 THEN reason1 WHEN failed2 ... END: the first failing check's reason, or null.

    CASE evaluates lazily, so later checks (and the parsing they need) are skipped once one fails."""
    expression = None
    for failed, reason in checks:
        expression = F.when(failed, reason) if expression is None else expression.when(failed, reason)
    return expression if expression is not None else F.lit(None).cast("string")


def _has_nul_escape(json_text: Column) -> Column:
    """JSON text holds a \\u0000 escape. The substring test first: the regex, an unanchored search with
    alternatives, costs far more and is rarely needed (And short-circuits)."""
    return (F.instr(json_text, "\\u0000") > 0) & json_text.rlike(_JSON_NUL_ESCAPE)


def json_field(parsed: Column, name: str) -> Column:
    """The top-level member `name` of a parsed message, as a VARIANT (SQL null when absent)."""
    if not name.isidentifier():
        raise ValueError(f"field name {name!r} cannot be a JSON path segment")
    return F.variant_get(parsed, f"$.{name}", "variant")


def check_field(field: Field, member: Member, required: bool, is_key: bool = False) -> Checked:
    """Read one registry field from its member and check it fits the field's logical type."""
    raw, kind, text = member.raw, member.kind, member.text
    blank = F.lit(False)
    failures: list[tuple[Column, Column]] = []
    if field.type in _STRING_TYPES:
        value = F.lower(text) if field.type == "uuid" else text
        fits = (kind == "STRING") & (text.rlike(_UUID) if field.type == "uuid" else F.lit(True))
        blank = F.trim(text) == ""
        failures.append((F.instr(text, _NUL) > 0, _reason(UNSTORABLE_TEXT, field.name)))
    elif field.type == "text[]":
        value = F.try_variant_get(raw, "$", field.spark_type)
        fits = kind.isin("ARRAY<STRING>", "ARRAY<VOID>")
        has_nul = F.instr(F.array_join(value, ""), _NUL) > 0  # array_join skips null items; no lambda to interpret
        failures.append((has_nul, _reason(UNSTORABLE_TEXT, field.name)))
    elif field.type == "jsonb":
        value = F.to_json(raw)
        fits = F.lit(True)
        failures.append((_has_nul_escape(value), _reason(UNSTORABLE_TEXT, field.name)))
    elif field.type == "integer":
        value = F.try_variant_get(raw, "$", field.spark_type)
        fits = (kind == "BIGINT") & value.isNotNull()  # null: outside the 32-bit range
    elif field.type == "numeric":
        value = F.try_variant_get(raw, "$", field.spark_type)
        fits = (kind.isin("BIGINT", "DOUBLE") | kind.startswith("DECIMAL")) & value.isNotNull()
    elif field.type == "boolean":
        value = F.try_variant_get(raw, "$", field.spark_type)
        fits = kind == "BOOLEAN"
    elif field.type == "timestamptz":
        value = F.when(text.rlike(_ISO_TIMESTAMP), text.try_cast("timestamp"))
        fits = kind == "STRING"
        failures.append((value.isNull(), _reason(UNPARSEABLE_TIMESTAMP, field.name)))
    else:
        raise ValueError(f"field {field.name}: no check for logical type {field.type!r}")

    missing = _reason(MISSING_ID) if is_key else _reason(MISSING_REQUIRED, field.name)
    checks = [(~member.present, missing if required else F.lit(None).cast("string"))]
    if required:
        checks.append((blank, missing))
    checks.append((~fits, _reason(WRONG_TYPE, field.name)))
    return Checked(value, _first_failure(checks + failures))


def _check_version(entity: Entity, checked: Checked) -> Checked:
    too_old = checked.value < F.lit(_EPOCH).cast("timestamp")
    reason = F.coalesce(checked.reason, F.when(too_old, _reason(VERSION_OUT_OF_RANGE, entity.version_column)))
    return Checked(checked.value, reason)


def _sink_columns(entity: Entity, text: Column, member: Callable[[str], Member]) -> dict[str, Checked]:
    """Values of the columns the sink adds beyond the message's fields; `text` is the message as received."""
    processado_em = check_field(_PROCESSADO_EM_FIELD, member(PROCESSADO_EM), required=False)
    # The received text, not to_json of the parsed message: it parsed as a JSON object, the jsonb column and the
    # documents normalise it anyway, and re-rendering a VARIANT costs a JsonFactory per key (measured: a quarter
    # of the validation's CPU).
    known = {
        PROCESSADO_EM: processado_em,
        PAYLOAD: Checked(text, F.when(_has_nul_escape(text), _reason(UNSTORABLE_TEXT, PAYLOAD))),
    }
    unknown = [c.name for c in entity.sink_columns if c.name not in known]
    if unknown:
        raise ValueError(f"entity {entity.name}: no value for sink columns {unknown}")
    return {c.name: known[c.name] for c in entity.sink_columns}


def _check_entity(entity: Entity, text: Column, member: Callable[[str], Member],
                  deleted: Column) -> dict[str, Checked]:
    """Each column of `entity` read from a message routed to it; `member(name)` is a top-level member."""
    tombstone_fields = (entity.key, entity.version_column)
    checked = {}
    for field in entity.fields:
        column = check_field(field, member(field.name), field.name in entity.required_fields,
                             is_key=field.name == entity.key)
        if field.name == entity.version_column:
            column = _check_version(entity, column)
        if field.name not in tombstone_fields:
            column = Checked(F.when(~deleted, column.value), F.when(~deleted, column.reason))
        checked[field.name] = column
    checked.update(_sink_columns(entity, text, member))
    return checked


def with_validation(max_payload_bytes: int) -> Callable[[DataFrame], DataFrame]:
    """Parse each value once, route it by tipo_evento and validate it.

    Adds tipo_evento, deleted, reject_reason, outcome and one struct column per entity (named by the
    entity, null unless the row is a valid message of that entity). The expressions are built here, once: building
    them takes thousands of JVM calls, too slow to repeat for every micro-batch (needs an active SparkSession)."""
    if max_payload_bytes <= 0:
        raise ValueError(f"max_payload_bytes must be positive, got {max_payload_bytes}")

    value = F.col("value")
    parsed = F.col(_JSON)

    def member(name: str) -> Member:
        """A member read from the columns projected below (its string value only for _TEXT_MEMBERS)."""
        raw = F.col(f"_raw_{name}")
        text = F.col(f"_text_{name}") if name in _TEXT_MEMBERS else Member.of(raw).text
        return Member(raw, F.col(f"_kind_{name}"), text)

    tipo_member, deleted_member = member(TIPO_EVENTO), member(DELETED)
    tipo = F.when(tipo_member.kind == "STRING", tipo_member.text)
    deleted = F.coalesce(F.try_variant_get(deleted_member.raw, "$", "boolean"), F.lit(False))
    routed = {entity: F.col(TIPO_EVENTO) == entity.tipo_evento for entity in ENTITIES}
    checks = {entity: _check_entity(entity, value.cast("string"), member, F.col(DELETED)) for entity in ENTITIES}

    def checked_column(kind: str, entity: Entity, name: str) -> str:
        return f"_{kind}_{entity.name}_{name}"

    reason = _first_failure([
        (value.isNull(), _reason(INVALID_JSON)),
        (F.length(value) > max_payload_bytes, _reason(PAYLOAD_TOO_LARGE)),
        # Parsed, and its text opens with "{": an object (cheaper than describing its whole schema).
        (parsed.isNull() | ~value.cast("string").rlike(_OBJECT_TEXT), _reason(INVALID_JSON)),
        (F.coalesce(~F.col(TIPO_EVENTO).isin(*[e.tipo_evento for e in ENTITIES]), F.lit(True)),
         _reason(UNKNOWN_TIPO_EVENTO)),
        (deleted_member.present & (deleted_member.kind != "BOOLEAN"), _reason(WRONG_TYPE, DELETED)),
        *[(routed[entity], F.coalesce(*[F.col(checked_column("reason", entity, name)) for name in columns]))
          for entity, columns in checks.items()],
    ])
    outcome = _first_failure([
        (F.col(REASON).isNotNull(), F.lit(REJECTED)),
        *[(is_entity, F.lit(entity.name)) for entity, is_entity in routed.items()],
    ])
    # Projected in steps, each referring to the columns of the previous ones: the parsed message; each member;
    # each member's kind and string value; routing; each field's value and reason; the row's reason; its outcome.
    # Each value is then computed once rather than in every check that reads it (measured: half the CPU of one
    # projection holding the whole expression).
    steps = [
        [F.when(F.length(value) <= max_payload_bytes, F.try_parse_json(value.cast("string"))).alias(_JSON)],
        [json_field(parsed, name).alias(f"_raw_{name}") for name in _MEMBERS],
        [F.schema_of_variant(f"_raw_{name}").alias(f"_kind_{name}") for name in _MEMBERS]
        + [Member.of(F.col(f"_raw_{name}")).text.alias(f"_text_{name}") for name in _TEXT_MEMBERS],
        [tipo.alias(TIPO_EVENTO), deleted.alias(DELETED)],
        # Guarded by the routing, so only the routed entity's checks run.
        [F.when(routed[entity], getattr(column, kind)).alias(checked_column(kind, entity, name))
         for entity, columns in checks.items() for name, column in columns.items() for kind in ("value", "reason")],
        [reason.alias(REASON)],
        [outcome.alias(OUTCOME), *[
            F.when(outcome == entity.name, F.struct(*[
                F.col(checked_column("value", entity, name)).alias(name) for name in columns
            ])).alias(entity.name)
            for entity, columns in checks.items()
        ]],
    ]
    internal = [_JSON, *[f"_{kind}_{name}" for kind in ("raw", "kind") for name in _MEMBERS],
                *[f"_text_{name}" for name in _TEXT_MEMBERS],
                *[checked_column(kind, entity, name) for entity, columns in checks.items() for name in columns
                  for kind in ("value", "reason")]]

    def transform(df: DataFrame) -> DataFrame:
        for columns in steps:
            df = df.select("*", *columns)
        return df.drop(*internal)

    return transform


def filter_entity(entity: Entity) -> Callable[[DataFrame], DataFrame]:
    """The valid rows of one entity: its registry columns, `deleted` and the Kafka position."""

    def transform(df: DataFrame) -> DataFrame:
        return df.where(F.col(OUTCOME) == entity.name).select(f"{entity.name}.*", DELETED, *KAFKA_META)

    return transform


def filter_rejects(df: DataFrame) -> DataFrame:
    return df.where(F.col(OUTCOME) == REJECTED)


def with_newest_per_id(entity: Entity) -> Callable[[DataFrame], DataFrame]:
    """Keep one row per id: the newest version; on a tie a tombstone, then the later Kafka record.

    Output columns: the entity's columns and `deleted`."""

    def transform(df: DataFrame) -> DataFrame:
        ordering = F.struct(entity.version_column, DELETED, "timestamp", "partition", "offset")
        kept = [c.name for c in entity.columns if c.name != entity.key] + [DELETED]
        newest = df.groupBy(entity.key).agg(F.max_by(F.struct(*kept), ordering).alias("_newest"))
        return newest.select(entity.key, "_newest.*").select(*[c.name for c in entity.columns], DELETED)

    return transform


def to_dead_letters(batch_id: int) -> Callable[[DataFrame], DataFrame]:
    """Rejected rows shaped as the dead-letter table: entity (when known), reason, raw payload, Kafka position."""

    def transform(df: DataFrame) -> DataFrame:
        entity = _first_failure([(F.col(TIPO_EVENTO) == e.tipo_evento, F.lit(e.name)) for e in ENTITIES])
        return df.transform(filter_rejects).select(
            entity.alias("entity"),
            F.col(REASON).alias("reason"),
            # NUL cannot be stored in PostgreSQL text; everything else of the payload is kept as received.
            F.translate(F.col("value").cast("string"), _NUL, "\ufffd").alias(RAW_PAYLOAD),
            F.col("topic"),
            F.col("partition").alias("kafka_partition"),
            F.col("offset").alias("kafka_offset"),
            F.lit(batch_id).cast("long").alias("batch_id"),
        )

    return transform


# --- documents: the one rendering of a row that both sinks load ------------------------------------------------------

KIND = "kind"  # an entity's name, or DEAD_LETTER
DEAD_LETTER = "dead_letter"
DOCUMENT_ID, DOCUMENT_VERSION, DOCUMENT = "id", "version", "doc"
DOCUMENT_COLUMNS = (KIND, DOCUMENT_ID, DOCUMENT_VERSION, DELETED, DOCUMENT)
# ISO-8601 with microseconds and an offset (Z: the session time zone is UTC); PostgreSQL and Elasticsearch both
# parse it, and it keeps every digit a timestamptz holds.
TIMESTAMP_FORMAT = "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"
_JSON_OPTIONS = {"timestampFormat": TIMESTAMP_FORMAT, "ignoreNullFields": "false"}


def to_documents(entity: Entity) -> Callable[[DataFrame], DataFrame]:
    """Newest-per-id rows (entity columns + deleted) -> documents: kind, id, version (epoch microseconds of the
    version column), deleted, and the row as a JSON object (jsonb columns nested as JSON, nulls kept)."""

    plain = [c.name for c in entity.columns if c.type != "jsonb"]
    nested = [c.name for c in entity.columns if c.type == "jsonb"]

    def transform(df: DataFrame) -> DataFrame:
        document = F.to_json(F.struct(*plain), _JSON_OPTIONS)
        if nested:
            # jsonb columns hold JSON text that validation accepted: spliced in before the closing brace rather than
            # parsed and rendered again (Spark renders a VARIANT object with a new JsonFactory per key). Line breaks
            # outside strings are insignificant, and the bulk API's NDJSON cannot carry them.
            document = F.concat(
                document.substr(F.lit(1), F.length(document) - 1),
                *[F.concat(F.lit(f",{json.dumps(name)}:"), F.coalesce(F.translate(name, "\r\n", "  "), F.lit("null")))
                  for name in nested],
                F.lit("}"),
            )
        return df.select(
            F.lit(entity.name).alias(KIND),
            F.col(entity.key).cast("string").alias(DOCUMENT_ID),
            F.unix_micros(entity.version_column).alias(DOCUMENT_VERSION),
            F.col(DELETED),
            document.alias(DOCUMENT),
        )

    return transform


def dead_letter_documents(df: DataFrame) -> DataFrame:
    """Rows of to_dead_letters as documents of kind DEAD_LETTER (no id or version)."""
    return df.select(
        F.lit(DEAD_LETTER).alias(KIND),
        F.lit(None).cast("string").alias(DOCUMENT_ID),
        F.lit(None).cast("long").alias(DOCUMENT_VERSION),
        F.lit(False).alias(DELETED),
        F.to_json(F.struct(*df.columns), _JSON_OPTIONS).alias(DOCUMENT),
    )
