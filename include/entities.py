"""The entity registry: each entity is declared once here.

DDL (include/sql), the Spark job's schemas, the Postgres and Elasticsearch sinks, the extraction and the
data-quality checks all read names, types, keys and version columns from these declarations, so a field added
here reaches every layer and nothing repeats a column list by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Elasticsearch refuses a keyword term over 32,766 bytes of UTF-8 (Lucene's limit) and the keyword mappings have no
# ignore_above, so a longer value would fail the whole bulk. Half of it: room for a normalizer that lengthens text
# (lower-casing grows some characters' UTF-8 by half), and still far above any real value (an email is <= 254).
KEYWORD_MAX_BYTES = 16 * 1024
# No sink limits an array's length; this bounds one field's share of a document (pages of one chat session).
TEXT_ARRAY_MAX_ITEMS = 10_000
# Numbers inside jsonb: Elasticsearch's JSON parser refuses a number over 1,000 characters even in a disabled object,
# and Postgres expands an exponent into digits (1e100000 becomes 100 KB of jsonb). Kept to a double's exponent
# range, so any reader can take them as numbers, and to 100 significant digits.
JSON_NUMBER_MAX_DIGITS = 100
JSON_NUMBER_MAX_EXPONENT = 308
# numeric values as the validator bounds them, decimal(38,9): their largest value (< 1e29) is far inside a double's
# range, so Elasticsearch's `double` holds every value Postgres does (to a double's precision).
NUMERIC_PRECISION, NUMERIC_SCALE = 38, 9


@dataclass(frozen=True)
class FieldType:
    """One logical type's rules in one row: how Postgres stores it, how Elasticsearch maps it, how the extraction
    encodes it, and the limits a value keeps so that both sinks accept it (spark/validation.py checks them)."""

    pg_type: str
    es_mapping: dict
    # The extraction's page query hands the value over as text that is already the contract's JSON value (uuid,
    # jsonb), or as a native value (False).
    extract_as_text: bool = False
    # The extraction's fast path (msgspec, include/extract/encoding.py) writes the value exactly as the contract's
    # encoder does; an entity with a field of a type that has False here is extracted row by row (slower).
    extract_fast_path: bool = True
    max_bytes: int | None = None  # UTF-8 bytes of a string, or of each item of an array
    max_items: int | None = None  # items of an array
    value_range: range | None = None  # integers
    precision: int | None = None  # numeric: decimal(precision, scale)
    scale: int | None = None
    max_number_digits: int | None = None  # jsonb: significant digits of each number in it
    max_number_exponent: int | None = None  # jsonb: |decimal exponent| of each number in it


TYPES: dict[str, FieldType] = {
    # 36 characters by its format.
    "uuid": FieldType("uuid", {"type": "keyword"}, extract_as_text=True),
    # Any length: analysed text has no term limit and `.raw` skips values over 256 characters.
    "text": FieldType("text", {"type": "text", "fields": {"raw": {"type": "keyword", "ignore_above": 256}}}),
    "keyword": FieldType("text", {"type": "keyword"}, max_bytes=KEYWORD_MAX_BYTES),
    # Each item is one keyword term.
    "text[]": FieldType("text[]", {"type": "keyword"}, max_bytes=KEYWORD_MAX_BYTES, max_items=TEXT_ARRAY_MAX_ITEMS),
    # Kept whole in _source, not indexed: its shape varies by client and must not break the mapping.
    "jsonb": FieldType("jsonb", {"type": "object", "enabled": False}, extract_as_text=True,
                       max_number_digits=JSON_NUMBER_MAX_DIGITS, max_number_exponent=JSON_NUMBER_MAX_EXPONENT),
    # 32 bits in both sinks.
    "integer": FieldType("integer", {"type": "integer"}, value_range=range(-2**31, 2**31)),
    # The fast path would turn a Decimal into a float (or NaN): numeric goes the row-by-row way.
    "numeric": FieldType("numeric", {"type": "double"}, extract_fast_path=False,
                         precision=NUMERIC_PRECISION, scale=NUMERIC_SCALE),
    "boolean": FieldType("boolean", {"type": "boolean"}),
    # Years 1 to 9999 in UTC (Python's range), inside Postgres's and Elasticsearch's.
    "timestamptz": FieldType("timestamptz", {"type": "date"}),
    # A change's place in the source's commit order (include/extract/cdc.py source_position): 16 hex digits of
    # the commit LSN, `/`, 8 of the change's index in its transaction. As text it sorts in commit order.
    "source_position": FieldType("text", {"type": "keyword"}),
}


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    required: bool = False
    # Its type's row, looked up once (the validator reads it for every field of every message).
    rules: FieldType = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"field {self.name}: unknown logical type {self.type!r}")
        object.__setattr__(self, "rules", TYPES[self.type])

    @property
    def pg_type(self) -> str:
        return self.rules.pg_type

    @property
    def es_mapping(self) -> dict:
        return self.rules.es_mapping


# The message member and warehouse column that orders an entity without a version column.
SOURCE_POSITION = "source_position"
PROCESSADO_EM_COLUMN = Field("processado_em", "timestamptz")


@dataclass(frozen=True)
class Entity:
    """One kind of record on topic `eventos`, told apart by `tipo_evento`.

    Newest wins in both sinks, by the entity's order: its version column (a timestamptz the source keeps), or, for
    a table without one (version_column=None), the source position the cdc extraction gives every change, kept in
    the warehouse's `source_position` column. A version column is what the poller and the REST source can give,
    so where a table has one it decides, whichever source extracted it: switching sources cannot regress a row."""

    name: str
    tipo_evento: str
    table: str
    index: str
    fields: tuple[Field, ...]
    version_column: str | None
    key: str = "id"
    # The Supabase table it is extracted from; None for events that arrive on Kafka directly.
    source_table: str | None = None
    # Columns the sink adds; not part of the message contract. A position-ordered entity also gets SOURCE_POSITION.
    sink_columns: tuple[Field, ...] = field(default=(PROCESSADO_EM_COLUMN,))

    def __post_init__(self):
        """The contract the rest of the code relies on, checked when the registry is imported: the message key, the
        staging table's `id uuid`, `version timestamptz` and `position text` columns, the sinks' newest-wins and the
        poller's keyset cursor all assume a uuid key named `id` and a timestamptz version or a source position."""
        names = [f.name for f in self.fields]
        if len(names) != len(set(names)):
            raise ValueError(f"entity {self.name}: duplicate field names")
        if self.key not in names:
            raise ValueError(f"entity {self.name}: {self.key!r} is not one of its fields")
        if self.key != "id" or self.key_field.type != "uuid":
            raise ValueError(f"entity {self.name}: the key must be a uuid field named 'id'")
        if self.version_column is None:
            # Only the cdc extraction gives a position: an entity published straight to Kafka needs a version.
            if self.source_table is None:
                raise ValueError(f"entity {self.name}: not extracted from a source table, so it needs a version column")
            if SOURCE_POSITION in names:
                raise ValueError(f"entity {self.name}: {SOURCE_POSITION!r} is the sink's column, not a field")
            object.__setattr__(self, "sink_columns", self.sink_columns + (Field(SOURCE_POSITION, "source_position"),))
        elif self.version_column not in names:
            raise ValueError(f"entity {self.name}: {self.version_column!r} is not one of its fields")
        elif self.version_field.type != "timestamptz":
            raise ValueError(f"entity {self.name}: version column {self.version_column!r} must be a timestamptz")

    @property
    def ordered_by_position(self) -> bool:
        return self.version_column is None

    @property
    def order_column(self) -> str:
        """The warehouse column the sinks' newest-wins compares."""
        return self.version_column or SOURCE_POSITION

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def columns(self) -> tuple[Field, ...]:
        """Every column of the warehouse table: the contract's fields, then the sink's."""
        return self.fields + self.sink_columns

    def index_name(self, prefix: str = "") -> str:
        """Its Elasticsearch index; a prefix keeps a deployment's (or a test's) indices apart."""
        return f"{prefix}_{self.index}" if prefix else self.index

    @property
    def key_field(self) -> Field:
        return next(f for f in self.fields if f.name == self.key)

    @property
    def version_field(self) -> Field | None:
        return next((f for f in self.fields if f.name == self.version_column), None)

    @property
    def required_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.required or f.name in (self.key, self.version_column))

    def es_mappings(self) -> dict:
        properties = {f.name: f.es_mapping for f in self.columns}
        return {"dynamic": "false", "properties": properties}


LEAD = Entity(
    name="lead",
    tipo_evento="lead",
    table="leads",
    index="leads",
    source_table="leads",
    version_column="updated_at",
    fields=(
        Field("id", "uuid", required=True),
        Field("nome", "text"),
        Field("email", "keyword"),
        Field("telefone", "keyword"),
        Field("nome_empresa", "text"),
        Field("nome_projeto", "text"),
        Field("localizacao", "jsonb"),
        Field("interesse", "text[]"),
        Field("score_qualificacao", "integer"),
        Field("status_lead", "keyword"),
        Field("origem", "keyword"),
        Field("utm_source", "keyword"),
        Field("utm_medium", "keyword"),
        Field("utm_campaign", "keyword"),
        Field("created_at", "timestamptz"),
        Field("updated_at", "timestamptz", required=True),
        Field("last_interaction_at", "timestamptz"),
    ),
)

# The user's own schema has no updated_at: sessions are ordered by source position, so only the cdc extraction
# reads them (the poller needs a version column, include/extract/sources.py).
CHAT_SESSION = Entity(
    name="chat_session",
    tipo_evento="chat_session",
    table="chat_sessions",
    index="chat_sessions",
    source_table="chat_sessions",
    version_column=None,
    fields=(
        Field("id", "uuid", required=True),
        Field("lead_id", "uuid"),
        Field("session_token", "keyword"),
        Field("user_agent", "text"),
        Field("ip_address", "keyword"),
        Field("total_messages", "integer"),
        Field("duration_seconds", "integer"),
        Field("pages_visited", "text[]"),
        Field("perguntas_feitas", "text[]"),
        Field("intencao_detectada", "text"),
        Field("nivel_interesse", "keyword"),
        Field("started_at", "timestamptz"),
        Field("ended_at", "timestamptz"),
        Field("is_active", "boolean"),
    ),
)

EVENTO = Entity(
    name="evento",
    tipo_evento="evento",
    table="eventos_raw",
    index="eventos",
    version_column="occurred_at",
    fields=(
        Field("id", "uuid", required=True),
        Field("evento", "keyword", required=True),
        Field("valor", "numeric"),
        Field("usuario", "keyword"),
        Field("occurred_at", "timestamptz", required=True),
    ),
    sink_columns=(PROCESSADO_EM_COLUMN, Field("payload", "jsonb")),
)

ENTITIES: tuple[Entity, ...] = (LEAD, CHAT_SESSION, EVENTO)
BY_TIPO_EVENTO: dict[str, Entity] = {e.tipo_evento: e for e in ENTITIES}
BY_NAME: dict[str, Entity] = {e.name: e for e in ENTITIES}
EXTRACTED: tuple[Entity, ...] = tuple(e for e in ENTITIES if e.source_table)


def entity_for(tipo_evento: str) -> Entity:
    try:
        return BY_TIPO_EVENTO[tipo_evento]
    except KeyError:
        raise KeyError(f"unknown tipo_evento {tipo_evento!r}; known: {sorted(BY_TIPO_EVENTO)}") from None
