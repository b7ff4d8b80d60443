"""Generative tests of the validator (hypothesis): whatever the bytes, `validate` returns a verdict and never raises;
a reject names a documented reason; a valid row renders to a document within every limit of both sinks (the
integration test tests/integration/test_validated_documents_sinks.py loads such documents into the real ones)."""

from __future__ import annotations

import datetime as dt
import decimal
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.entities import ENTITIES, KEYWORD_MAX_BYTES, SOURCE_POSITION
from spark import validation as V
from tests.validation_cases import NEWEST, WIDE_CHARACTERS, boundary_values, deep, exactly, message_with, to_json

MAX_BYTES = 256 * 1024
# What the sinks refuse, measured on Elasticsearch 8.19 and Postgres 15 (see include/entities.py).
ES_TERM_BYTES = 32_766
ES_NUMBER_CHARACTERS = 1_000
ES_NESTING = 1_000
PG_NUMERIC_DIGITS = 131_072
EXAMPLES = settings(max_examples=1_000, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                                HealthCheck.data_too_large])

# --- strategies ------------------------------------------------------------------------------------------------------

# Any code point, lone surrogates and NUL included.
odd_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=20)
short_sized_text = st.builds(exactly, st.sampled_from([0, 1, 255, 256, 257]), st.sampled_from(WIDE_CHARACTERS))
sized_text = st.builds(exactly, st.sampled_from([0, 1, 256, KEYWORD_MAX_BYTES - 1, KEYWORD_MAX_BYTES,
                                                  KEYWORD_MAX_BYTES + 1, ES_TERM_BYTES + 1]),
                       st.sampled_from(WIDE_CHARACTERS))
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-10 ** 120, max_value=10 ** 120),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.builds(lambda digits, exponent: decimal.Decimal(f"{digits}E{exponent}"),
              st.integers(min_value=-10 ** 110, max_value=10 ** 110), st.integers(min_value=-20_000, max_value=20_000)),
    st.floats(allow_nan=False, allow_infinity=False),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | odd_text | short_sized_text,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(odd_text, children, max_size=6),
    max_leaves=10,
)
# As values (for a field) to a depth Python's recursion in to_json allows; as text, deeper than every parser allows.
deep_values = st.builds(deep, st.integers(min_value=0, max_value=200), json_values)


def deep_text(levels: int, leaf: str) -> str:
    openers = ['{"n":' if level % 2 else "[" for level in range(levels)]
    return "".join(openers) + leaf + "".join("}" if level % 2 else "]" for level in reversed(range(levels)))


deep_texts = st.builds(deep_text, st.integers(min_value=0, max_value=3_000), json_values.map(to_json))
timestamps = st.one_of(
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                 timezones=st.sampled_from([dt.timezone.utc, dt.timezone(dt.timedelta(hours=-3)),
                                            dt.timezone(dt.timedelta(hours=14))])).map(dt.datetime.isoformat),
    st.from_regex(r"\A\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}(:?\d{2})?)\Z"),
)


def field_values(field):
    """Anything at all, the type's boundary values, or values of its kind."""
    own = {"timestamptz": timestamps, "keyword": sized_text, "text": sized_text, "jsonb": json_values | deep_values,
           "text[]": st.lists(st.none() | sized_text | odd_text, max_size=5), "integer": numbers,
           "numeric": numbers, "boolean": st.booleans(), "uuid": st.uuids().map(str),
           "source_position": st.from_regex(r"\A[0-9A-Fa-f]{14,17}/[0-9A-F]{7,9}\Z")}[field.type]
    return st.one_of(json_values, st.sampled_from(boundary_values(field)), own)


# Built once: a strategy per field (and one for members the registry does not name).
FIELD_VALUES = {(entity.name, field.name): field_values(field) for entity in ENTITIES for field in entity.columns}


@st.composite
def mutated_messages(draw) -> bytes:
    """A valid message of some entity with up to three members (fields, envelope or unknown) replaced or removed."""
    entity = draw(st.sampled_from(ENTITIES))
    names = [f.name for f in entity.fields] + ["tipo_evento", "processado_em", "deleted", SOURCE_POSITION, "campo_novo"]
    changes = {}
    for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
        changes[name] = draw(FIELD_VALUES.get((entity.name, name), json_values))
    return message_with(entity, changes, ascii_only=draw(st.booleans()))


def json_text(value) -> st.SearchStrategy[bytes]:
    return st.booleans().map(lambda ascii_only: to_json(value, ascii_only).encode("utf-8", "surrogatepass"))


any_json = st.one_of(json_values.flatmap(json_text), deep_texts.map(str.encode))
brackets = st.text(st.sampled_from('[]{}"\\:,a1 '), max_size=3_000).map(str.encode)

# --- what a verdict must be ------------------------------------------------------------------------------------------

def depth_of(value) -> int:
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level)
            pending.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def assert_both_sinks_accept(verdict: V.Validated):
    """The rendered document against what Postgres and Elasticsearch refuse."""
    document = V.render(verdict.row)
    assert "\\u0000" not in document  # Postgres text and jsonb cannot hold NUL
    document.encode("utf-8")  # no lone surrogate
    numbers_seen = []
    parsed = json.loads(document, parse_float=lambda t: numbers_seen.append(t) or 0,
                        parse_int=lambda t: numbers_seen.append(t) or 0)
    for text in numbers_seen:
        assert len(text) <= ES_NUMBER_CHARACTERS, text[:40]
        number = decimal.Decimal(text)
        assert abs(number.adjusted()) < PG_NUMERIC_DIGITS and len(number.as_tuple().digits) < PG_NUMERIC_DIGITS
    assert depth_of(parsed) <= ES_NESTING
    for column in verdict.entity.columns:
        value, rules = verdict.row[column.name], column.rules
        if value is None:
            continue
        if column.es_mapping.get("type") == "keyword":
            for term in (value if isinstance(value, list) else [value]):
                assert term is None or len(term.encode("utf-8")) <= ES_TERM_BYTES, column.name
        if column.type == "integer":
            assert value in rules.value_range
        if column.type == "numeric":
            assert abs(value) < 10 ** (rules.precision - rules.scale) and -value.as_tuple().exponent <= rules.scale
    if verdict.entity.ordered_by_position:
        assert verdict.version is None and int(verdict.position[:16], 16) < V.MAX_POSITION_LSN
    else:
        assert dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) <= verdict.version <= NEWEST


def check(value: bytes) -> V.Validated:
    verdict = V.validate(value, MAX_BYTES, newest_version=NEWEST)  # must not raise, whatever the value
    if verdict.reason is None:
        assert verdict.entity is not None and list(verdict.row) == [c.name for c in verdict.entity.columns]
        assert_both_sinks_accept(verdict)
    else:
        assert verdict.reason.split(": ")[0] in V.REASONS and not verdict.reason.startswith(V.VALIDATOR_ERROR)
        assert verdict.row is None
    return verdict


# --- properties ------------------------------------------------------------------------------------------------------

@settings(EXAMPLES, max_examples=2_000)
@given(st.binary(max_size=2_000))
def test_random_bytes(value):
    check(value)


@EXAMPLES
@given(any_json)
def test_random_json_deep_wide_huge_and_odd(value):
    check(value)


@EXAMPLES
@given(brackets)
def test_random_brackets_and_quotes(value):
    check(value)


@settings(EXAMPLES, max_examples=2_000)
@given(mutated_messages())
def test_every_field_of_every_entity_mutated(value):
    check(value)

