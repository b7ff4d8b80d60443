from __future__ import annotations

import pytest

from include.entities import BY_TIPO_EVENTO, ENTITIES, EXTRACTED, Entity, Field, entity_for
from include.schema import quote_ident, source_ddl, warehouse_ddl


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


def test_warehouse_ddl_covers_every_registry_column():
    ddl = "\n".join(warehouse_ddl())
    for entity in ENTITIES:
        assert f"CREATE TABLE IF NOT EXISTS {quote_ident(entity.table)}" in ddl
        for column in entity.columns:
            assert f"{quote_ident(column.name)} {column.pg_type}" in ddl


def test_source_ddl_has_triggers_for_each_extracted_entity():
    ddl = "\n".join(source_ddl())
    for entity in EXTRACTED:
        assert f"{entity.source_table}_set_updated_at" in ddl
        assert f"pipeline_capture_delete('{entity.name}')" in ddl


def test_quote_ident_escapes_quotes():
    assert quote_ident('we"ird') == '"we""ird"'


def test_spark_schema_and_es_mapping_follow_the_registry():
    lead = entity_for("lead")
    schema = lead.spark_schema()
    assert schema.fieldNames() == list(lead.field_names)
    assert schema["interesse"].dataType.simpleString() == "array<string>"
    assert schema["score_qualificacao"].dataType.simpleString() == "int"
    mappings = lead.es_mappings()
    assert mappings["properties"]["updated_at"] == {"type": "date"}
    assert set(mappings["properties"]) == {c.name for c in lead.columns}
