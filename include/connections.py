"""Clients built from Airflow connections, for code that runs inside Airflow tasks.

Imports of provider hooks stay inside the functions: DAG files import this module at parse time, and parsing
must not load drivers or touch a connection.
"""

from __future__ import annotations

WAREHOUSE_CONN_ID = "warehouse_postgres"
SUPABASE_DB_CONN_ID = "supabase_postgres"
ELASTICSEARCH_CONN_ID = "elasticsearch_default"
KAFKA_CONN_ID = "kafka_default"
SPARK_CONN_ID = "spark_default"


def postgres_connection(conn_id: str = WAREHOUSE_CONN_ID):
    """A DB-API connection; the connection's extras carry the statement timeout."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    return PostgresHook(postgres_conn_id=conn_id).get_conn()


def elasticsearch_client(conn_id: str = ELASTICSEARCH_CONN_ID):
    """An `elasticsearch.Elasticsearch` client configured by the provider's hook from the connection."""
    from airflow.providers.elasticsearch.hooks.elasticsearch import ElasticsearchSQLHook

    return ElasticsearchSQLHook(elasticsearch_conn_id=conn_id).get_conn().es
