from __future__ import annotations

import pytest

from include.entities import BY_TIPO_EVENTO, ENTITIES, EXTRACTED, TYPES, Entity, Field, entity_for
from include.schema import quote_ident, warehouse_ddl


def test_registry_declares_the_users_contract():
    assert {e.table for e in ENTITIES} == {"leads", "chat_sessions", "eventos_raw"}
    assert set(BY_TIPO_EVENTO) >= {"lead", "chat_session"}
    assert [e.source_table for e in EXTRACTED] == ["leads", "chat_sessions"]
    for entity in ENTITIES:
        assert "processado_em" in [c.name for c in entity.columns]


def test_entity_validation():
    with pytest.raises(ValueError, match="version"):
        Entity(name="x", tipo_evento="x", table="x", index="x", version_column="version",
               fields=(Field("id", "uuid"),))
    with pytest.raises(ValueError, match="unknown logical type"):
        Field("id", "float128")
    with pytest.raises(KeyError, match="unknown tipo_evento"):
        entity_for("nope")


@pytest.mark.parametrize("fields, key, version, refused", [
    ((Field("id", "text"), Field("v", "timestamptz")), "id", "v", "key must be a uuid"),
    ((Field("codigo", "uuid"), Field("v", "timestamptz")), "codigo", "v", "key must be a uuid field named 'id'"),
    ((Field("id", "uuid"), Field("v", "integer")), "id", "v", "must be a timestamptz"),
    ((Field("id", "uuid"), Field("v", "text")), "id", "v", "must be a timestamptz"),
])
def test_the_registry_refuses_an_entity_outside_its_contract(fields, key, version, refused):
    with pytest.raises(ValueError, match=refused):
        Entity(name="x", tipo_evento="x", table="x", index="x", key=key, version_column=version, fields=fields)


def test_the_extraction_fast_path_is_a_property_of_each_type():
    from include.extract.encoding import TEXT_TYPES, can_encode

    assert TEXT_TYPES == ("uuid", "jsonb")
    assert [name for name, rules in TYPES.items() if not rules.extract_fast_path] == ["numeric"]
    assert all(can_encode(e) == all(f.type != "numeric" for f in e.fields) for e in ENTITIES)


def test_warehouse_ddl_covers_every_registry_column():
    ddl = "\n".join(warehouse_ddl())
    for entity in ENTITIES:
        assert f"CREATE TABLE IF NOT EXISTS {quote_ident(entity.table)}" in ddl
        for column in entity.columns:
            assert f"{quote_ident(column.name)} {column.pg_type}" in ddl


def test_the_standin_ddl_has_the_pollers_triggers_only_where_a_table_has_a_version():
    from stack.standin import standin_ddl

    for entity in EXTRACTED:
        ddl = "\n".join(standin_ddl((entity,)))
        assert (f"{entity.source_table}_set_updated_at" in ddl) == (not entity.ordered_by_position)
        assert (f"pipeline_capture_delete('{entity.name}')" in ddl) == (not entity.ordered_by_position)
        assert "REPLICA IDENTITY FULL" in ddl


def test_neither_include_nor_a_job_release_offers_the_standin_ddl():
    """The stand-in's triggers would alter a hosted project's tables: only the stack has their DDL."""
    from include.orchestration.releases import source_files
    from include.settings import REPO_ROOT
    from stack.standin import standin_ddl

    markers = ("pipeline_set_updated_at", "pipeline_capture_delete", "REPLICA IDENTITY FULL;")
    assert all(any(marker in statement for statement in standin_ddl()) for marker in markers)
    offered = {str(path.relative_to(REPO_ROOT)): marker
               for path in [*(REPO_ROOT / "include").rglob("*.py"), *(REPO_ROOT / "include").rglob("*.sql"),
                            *(REPO_ROOT / relative for relative in source_files(REPO_ROOT))]
               for marker in markers if marker in path.read_text()}
    assert offered == {}


def test_quote_ident_escapes_quotes():
    assert quote_ident('we"ird') == '"we""ird"'


def test_es_mapping_follows_the_registry():
    lead = entity_for("lead")
    mappings = lead.es_mappings()
    assert mappings["properties"]["updated_at"] == {"type": "date"}
    assert set(mappings["properties"]) == {c.name for c in lead.columns}


def test_each_type_row_keeps_its_values_within_what_both_sinks_accept():
    es_term_bytes, double_max = 32_766, 1.7976931348623157e308
    for name, rules in TYPES.items():
        mapping = rules.es_mapping
        # A uuid is 36 characters by its format, a source position 25.
        if mapping["type"] == "keyword" and name not in ("uuid", "source_position"):
            assert rules.max_bytes is not None and rules.max_bytes <= es_term_bytes, name
        if mapping["type"] == "text":
            assert mapping["fields"]["raw"]["ignore_above"] * 4 <= es_term_bytes, name  # characters of <= 4 bytes
        if rules.pg_type.endswith("[]"):
            assert rules.max_items is not None, name
    numeric = TYPES["numeric"]
    assert 10.0 ** (numeric.precision - numeric.scale) < double_max  # Elasticsearch's double holds every value
    assert TYPES["integer"].value_range == range(-2**31, 2**31)  # Postgres integer and Elasticsearch integer
    jsonb = TYPES["jsonb"]
    assert jsonb.max_number_digits + len("-0.E+") + len(str(jsonb.max_number_exponent)) < 1_000  # ES number length
