"""`make airflow` (`python -m stack airflow-ui`, run by the shared `airflow_instance` fixture, which also checks
that `airflow-down` stops exactly those processes): the UI, scheduler, DAG processor and triggerer come up
healthy, the printed login works, and every DAG of the dags folder is listed, unpaused, as a user finds them."""

from __future__ import annotations

from tests.e2e.conftest import DAG_FILES


def test_airflow_ui_starts_healthy_and_lists_every_dag_unpaused(airflow_instance):
    health = airflow_instance.request("GET", "/api/v2/monitor/health", authenticated=False)
    assert {part: state["status"] for part, state in health.items()} == {
        "metadatabase": "healthy", "scheduler": "healthy", "triggerer": "healthy", "dag_processor": "healthy"}
    assert airflow_instance.dag_files() == DAG_FILES
    dags = airflow_instance.dags()
    assert "warehouse_schema" in dags and len(dags) == len(DAG_FILES)
    assert not [dag_id for dag_id, dag in dags.items() if dag["is_paused"]], "DAGs start unpaused"
