"""
### Warehouse schema

Applies the schema every other DAG relies on, idempotently: the warehouse tables (`leads`, `chat_sessions`,
`eventos_raw`, dead letters, tombstones, heartbeats, extraction cursors) and the Elasticsearch indices. Table and
index definitions come from the entity registry (`include/entities.py`), so a field added there reaches every
layer on the next run. It never creates or alters anything on the Supabase source: those tables are the user's
(the local stack creates its stand-in's itself).

Run it after deploying a new registry version, or any time: every statement is safe to repeat.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from include.connections import WAREHOUSE_CONN_ID
from include.orchestration.dag_defaults import dag_arguments


@dag(
    schedule=None,
    doc_md=__doc__,
    **dag_arguments(tags=["schema", "postgres", "elasticsearch"]),
)
def warehouse_schema():
    @task
    def warehouse_tables() -> None:
        from include.connections import postgres_connection
        from include.schema import apply_sql, warehouse_ddl

        apply_sql(postgres_connection(WAREHOUSE_CONN_ID), warehouse_ddl())

    @task
    def search_indices() -> list[str]:
        from include.connections import elasticsearch_client
        from include.schema import ensure_indices

        return ensure_indices(elasticsearch_client())

    warehouse_tables()
    search_indices()


warehouse_schema()
