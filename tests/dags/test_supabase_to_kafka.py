"""The supabase_to_kafka DAG's shape: one mapped task per registry entity, the topic as its Asset outlet,
retries with backoff, backfill params, and a schedule taken from the environment at parse time."""

from __future__ import annotations

from pathlib import Path

from include.entities import EXTRACTED

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "supabase_to_kafka.py"


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE), safe_mode=False)
    assert not bag.import_errors, bag.import_errors
    return bag.dags["supabase_to_kafka"]


def test_one_mapped_extract_task_per_extracted_entity_with_the_topic_as_outlet(monkeypatch):
    monkeypatch.setenv("PIPELINE_KAFKA_TOPIC", "eventos_dag_test")
    monkeypatch.delenv("PIPELINE_EXTRACT_SCHEDULE", raising=False)
    monkeypatch.setenv("PIPELINE_EXTRACT_SOURCE", "postgres")
    dag = _dag()

    [task] = dag.tasks
    assert task.op_kwargs_expand_input.value == {"entity_name": [entity.name for entity in EXTRACTED]}
    [asset] = task.outlets
    assert asset.uri.startswith("kafka://") and asset.uri.endswith("/eventos_dag_test")
    assert task.retries >= 2 and task.retry_exponential_backoff
    assert dag.timetable.expression == "*/10 * * * *"
    assert set(dag.params) == {"from_timestamp", "lookback_seconds", "resnapshot"}
    assert dag.max_active_runs == 1


def test_schedule_is_configurable_through_the_environment(monkeypatch):
    monkeypatch.setenv("PIPELINE_EXTRACT_SCHEDULE", "0 * * * *")
    assert _dag().timetable.expression == "0 * * * *"


def test_cdc_mode_is_one_task_reading_the_slot_for_every_entity(monkeypatch):
    monkeypatch.setenv("PIPELINE_EXTRACT_SOURCE", "cdc")
    [task] = _dag().tasks
    assert task.task_id == "extract_changes" and not hasattr(task, "op_kwargs_expand_input")
    [asset] = task.outlets
    assert asset.uri.startswith("kafka://")
    assert task.retries >= 2
