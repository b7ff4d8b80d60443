"""Applies the schema: warehouse tables and Elasticsearch indices. It never creates or alters anything on the
source (the local stack owns its Supabase stand-in's DDL: stack/standin.py).

SQL lives in include/sql/*.sql as Jinja templates (Airflow's templating language) that take identifiers from
the entity registry only. Every statement here is idempotent, so the schema task can run any number of times.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jinja2

from include.entities import ENTITIES, Entity

log = logging.getLogger(__name__)
SQL_DIR = Path(__file__).resolve().parent / "sql"


def quote_ident(name: str) -> str:
    """Double-quote an identifier the way PostgreSQL expects."""
    return '"' + name.replace('"', '""') + '"'


def sql_templates(directory: Path) -> jinja2.Environment:
    """The Jinja environment of a folder of SQL templates: undefined names fail, identifiers go through `ident`."""
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    templates.filters["ident"] = quote_ident
    return templates


_templates = sql_templates(SQL_DIR)


def render_sql(template_name: str, **context) -> str:
    return _templates.get_template(template_name).render(**context)


def render_sql_macro(template_name: str, macro: str, **arguments) -> str:
    """One statement from a template that holds several as Jinja macros (e.g. stream_merge.sql)."""
    return str(getattr(_templates.get_template(template_name).module, macro)(**arguments)).strip()


# Where the streaming job stages each micro-batch before merging it (stream_staging.sql, stream_merge.sql).
STREAM_STAGE_TABLE = "stream_stage"


def warehouse_ddl(entities: tuple[Entity, ...] = ENTITIES) -> list[str]:
    return (
        [render_sql("warehouse_support.sql")]
        + [render_sql("warehouse_entity_table.sql", entity=entity) for entity in entities]
        + [render_sql("stream_staging.sql", stage=STREAM_STAGE_TABLE)]
    )


def apply_sql(connection, statements: list[str]) -> None:
    """Run the statements in one transaction on a DB-API connection (psycopg 2 or 3)."""
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
    connection.commit()
    log.info("applied %s schema scripts", len(statements))


def index_body(entity: Entity, replicas: int = 0) -> dict:
    return {"settings": {"number_of_shards": 1, "number_of_replicas": replicas}, "mappings": entity.es_mappings()}


def ensure_index(es, entity: Entity, index: str | None = None, replicas: int = 0) -> str:
    """Create the entity's index, or add new registry fields to an existing one. Returns the index name."""
    name = index or entity.index
    body = index_body(entity, replicas)
    if es.indices.exists(index=name):
        es.indices.put_mapping(index=name, properties=body["mappings"]["properties"])
    else:
        es.indices.create(index=name, settings=body["settings"], mappings=body["mappings"])
    log.info("index %s ready", name)
    return name


def ensure_indices(es, entities: tuple[Entity, ...] = ENTITIES) -> list[str]:
    return [ensure_index(es, entity) for entity in entities]
