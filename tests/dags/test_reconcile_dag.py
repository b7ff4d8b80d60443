"""The reconcile DAG's shape: a dry-run compare and a repair per registry entity, mapped, the repair after every
compare and skipped unless the run's `dry_run` param is false; daily; one run at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.entities import ENTITIES

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "reconcile.py"


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE), safe_mode=False)
    assert not bag.import_errors, bag.import_errors
    return bag.dags["reconcile"]


def test_compare_then_repair_mapped_over_every_entity():
    dag = _dag()
    tasks = {task.task_id: task for task in dag.tasks}
    assert set(tasks) == {"compare", "repair"}
    for task in tasks.values():
        assert task.op_kwargs_expand_input.value == {"entity_name": [entity.name for entity in ENTITIES]}
        assert task.retries >= 2 and task.retry_exponential_backoff
    assert tasks["repair"].upstream_task_ids == {"compare"}
    assert dag.timetable.expression == "0 0 * * *"  # @daily
    assert dag.params["dry_run"] is True
    assert dag.max_active_runs == 1


def test_repair_is_skipped_on_a_dry_run_before_touching_anything():
    from airflow.sdk.exceptions import AirflowSkipException

    repair = next(task for task in _dag().tasks if task.task_id == "repair")
    for params in ({"dry_run": True}, {}, None):
        with pytest.raises(AirflowSkipException, match="dry run"):
            repair.python_callable(entity_name="lead", params=params)
