"""Every connection the pipeline opens, in one place: the Airflow connection ids, one settings-based way to open a
Postgres session (warehouse or source, optionally on a schema), and the Airflow-based ways for task bodies.

Settings-based sessions serve code outside Airflow (the job's executors, the stack, status, tests, benchmarks);
Airflow-based ones serve task bodies, where the connections are the configuration. Imports of drivers and provider
hooks stay inside the functions: DAG files import this module at parse time, and parsing must not load drivers or
touch a connection.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # include.settings names these connections' ids: no import cycle at run time
    from include.settings import Settings

WAREHOUSE_CONN_ID = "warehouse_postgres"
SUPABASE_DB_CONN_ID = "supabase_postgres"
SUPABASE_API_CONN_ID = "supabase_api"
ELASTICSEARCH_CONN_ID = "elasticsearch_default"
KAFKA_CONN_ID = "kafka_default"
SPARK_CONN_ID = "spark_default"

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def check_schema_name(schema: str) -> str:
    """A search_path value that needs no quoting (lower-case identifier)."""
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"Postgres schema {schema!r} must be a lower-case identifier ([a-z_][a-z0-9_]*)")
    return schema


def set_schema(connection, schema: str | None) -> None:
    """Scope a session (psycopg or psycopg2) to `schema`. A SET rather than libpq `options`, which would replace the
    statement timeout the connection carries."""
    if not schema:
        return
    cursor = connection.cursor()
    try:
        # The name is checked above, so it needs no quoting; psycopg2 and psycopg quote identifiers differently.
        cursor.execute(f"SET search_path TO {check_schema_name(schema)}")
    finally:
        cursor.close()
    if not connection.autocommit:
        connection.commit()


def pg_session(settings: Settings, database: str, schema: str | None = None, **kwargs):
    """A psycopg session on `database` of the settings' cluster, with the statement timeout every session carries."""
    import psycopg

    connection = psycopg.connect(settings.pg_dsn(database), **kwargs)
    set_schema(connection, schema)
    return connection


def warehouse_session(settings: Settings, schema: str | None = None, **kwargs):
    return pg_session(settings, settings.pg_warehouse_db, schema, **kwargs)


def source_session(settings: Settings, schema: str | None = None, **kwargs):
    return pg_session(settings, settings.pg_source_db, schema, **kwargs)


def postgres_connection(conn_id: str = WAREHOUSE_CONN_ID, schema: str | None = None):
    """A DB-API connection from an Airflow connection; its extras carry the statement timeout."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    connection = PostgresHook(postgres_conn_id=conn_id).get_conn()
    set_schema(connection, schema)
    return connection


def postgres_conninfo(conn_id: str = SUPABASE_DB_CONN_ID) -> str:
    """A libpq conninfo string from an Airflow connection, for clients that open their own connections (the cdc
    extraction's replication connection); the extras' `options` (the statement timeout) are kept."""
    from airflow.sdk import BaseHook
    from psycopg.conninfo import make_conninfo

    connection = BaseHook.get_connection(conn_id)
    return make_conninfo(host=connection.host, port=connection.port, user=connection.login,
                         password=connection.password, dbname=connection.schema,
                         **{k: v for k, v in connection.extra_dejson.items() if k == "options"})


def kafka_bootstrap(conn_id: str = KAFKA_CONN_ID) -> str:
    """The bootstrap servers of the Airflow Kafka connection."""
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(conn_id).extra_dejson["bootstrap.servers"]


def supabase_api(conn_id: str = SUPABASE_API_CONN_ID) -> tuple[str, str]:
    """(URL, key) of the Supabase REST connection."""
    from airflow.sdk import BaseHook

    connection = BaseHook.get_connection(conn_id)
    return connection.host, connection.password


def elasticsearch_client(conn_id: str = ELASTICSEARCH_CONN_ID):
    """An `elasticsearch.Elasticsearch` client configured by the provider's hook from the connection."""
    from airflow.providers.elasticsearch.hooks.elasticsearch import ElasticsearchSQLHook

    return ElasticsearchSQLHook(elasticsearch_conn_id=conn_id).get_conn().es
