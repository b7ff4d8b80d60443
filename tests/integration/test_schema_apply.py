"""The schema applies against the real Postgres and Elasticsearch, and applying it twice changes nothing."""

from __future__ import annotations

from include.entities import ENTITIES
from include.schema import apply_sql, ensure_index, warehouse_ddl


def _columns(connection, schema: str, table: str) -> dict[str, str]:
    rows = connection.execute(
        "SELECT column_name, udt_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
        (schema, table)).fetchall()
    return dict(rows)


def test_warehouse_ddl_is_idempotent_and_typed(pg_schema, pg_connect):
    connection = pg_connect(schema=pg_schema)
    apply_sql(connection, warehouse_ddl())  # second time: the fixture applied it once already
    for entity in ENTITIES:
        columns = _columns(connection, pg_schema, entity.table)
        assert set(columns) == {c.name for c in entity.columns}
    leads = _columns(connection, pg_schema, "leads")
    assert leads["localizacao"] == "jsonb" and leads["interesse"] == "_text"
    assert leads["updated_at"] == "timestamptz" and leads["id"] == "uuid"


def test_index_created_then_extended(es, es_prefix):
    from include.entities import LEAD

    name = ensure_index(es, LEAD, index=f"{es_prefix}_leads")
    again = ensure_index(es, LEAD, index=name)
    mapping = es.indices.get_mapping(index=name)[name]["mappings"]
    assert again == name
    assert mapping["properties"]["interesse"] == {"type": "keyword"}
    assert mapping["dynamic"] == "false"
