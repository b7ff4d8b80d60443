"""The local stack's Supabase stand-in: the tables the user's Supabase project holds, for the pipeline to read.

Its DDL (stack/sql/source_*.sql) is the stack's, never the pipeline's: on a hosted project the user's tables are
theirs, so no DAG and nothing in include/ creates or alters them. `python -m stack up`, `python -m stack standin`
(the compose deployment's stand-in), the tests' fixtures and the benchmarks apply it to databases or schemas of
their own.
"""

from __future__ import annotations

from pathlib import Path

from include.entities import EXTRACTED, Entity
from include.schema import apply_sql, sql_templates

_templates = sql_templates(Path(__file__).resolve().parent / "sql")


def standin_ddl(entities: tuple[Entity, ...] = EXTRACTED, schema: str = "public") -> list[str]:
    """The stand-in's DDL in `schema` (`public` for the stack's own; tests pass a schema they own)."""
    return [_templates.get_template("source_support.sql").render(schema=schema)] + [
        _templates.get_template("source_entity_table.sql").render(entity=entity, schema=schema)
        for entity in entities
    ]


def apply_standin(connection, schema: str = "public") -> None:
    """Create (or bring up to date: every statement is idempotent) the stand-in's tables in `schema`."""
    apply_sql(connection, standin_ddl(schema=schema))
