"""The warehouse_schema DAG writes the warehouse and the indices, never the source: on a hosted project the
Supabase tables are the user's, and the local stand-in's DDL belongs to the stack (stack/standin.py)."""

from __future__ import annotations

from pathlib import Path

from include.connections import WAREHOUSE_CONN_ID
from include.schema import warehouse_ddl

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "warehouse_schema.py"


def test_every_task_of_warehouse_schema_opens_the_warehouse_only(monkeypatch):
    import include.connections
    import include.schema
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE), safe_mode=False)
    assert not bag.import_errors, bag.import_errors
    opened, applied, indexed = [], [], []
    monkeypatch.setattr(include.connections, "postgres_connection", lambda conn_id: opened.append(conn_id) or conn_id)
    monkeypatch.setattr(include.connections, "elasticsearch_client", lambda: "es")
    monkeypatch.setattr(include.schema, "apply_sql", lambda connection, statements: applied.append(
        (connection, statements)))
    monkeypatch.setattr(include.schema, "ensure_indices", lambda es: indexed.append(es) or [])

    for task in bag.dags["warehouse_schema"].tasks:
        task.python_callable()

    assert opened == [WAREHOUSE_CONN_ID]
    assert applied == [(WAREHOUSE_CONN_ID, warehouse_ddl())]
    assert indexed == ["es"]
