"""The DAGs driven by the real scheduler: the shared `airflow_instance` runs as `make airflow` starts it (API
server, scheduler, DAG processor, triggerer, each its own process), with the extraction and the watchdog
scheduled every minute through their settings and every name pointed at objects of its own. Nothing here calls
`airflow dags test`: every run below is started by the scheduler."""

from __future__ import annotations

import datetime as dt
import json

from kafka import KafkaConsumer

from include.entities import LEAD
from include.orchestration.config import StreamOpsConfig
from include.schema import quote_ident
from stack.services import pid_alive
from tests.stream_support import driver_jvms

EXTRACT_DAG = "supabase_to_kafka"
SUPERVISOR_DAG = "stream_supervisor"
WATCHDOG_DAG = "stream_watchdog"


def _finished(airflow, dag_id: str, run_id: str) -> dict | None:
    run = next(r for r in airflow.runs(dag_id) if r["dag_run_id"] == run_id)
    return run if run["state"] in ("success", "failed") else None


def _started(run: dict) -> dt.datetime:
    return dt.datetime.fromisoformat(run["start_date"])


def test_triggered_run_with_params_and_scheduled_run_succeed(airflow_instance, settings, pg_connect):
    airflow = airflow_instance
    source = pg_connect(airflow.env["PIPELINE_PG_SOURCE_DB"])
    lead_ids = {row[0] for row in source.execute(
        f"INSERT INTO public.{quote_ident(LEAD.source_table)} (nome, email) "
        "SELECT 'Agendado ' || n, 'agendado' || n || '@example.com.br' FROM generate_series(1, 3) n "
        "RETURNING id::text").fetchall()}
    source.commit()
    try:
        # As the trigger form posts it: the params as the run's conf.
        conf = {"from_timestamp": "2020-01-01T00:00:00+00:00", "lookback_seconds": 0}
        run_id = airflow.trigger(EXTRACT_DAG, conf)
        run = airflow.wait_for("the triggered extraction", lambda: _finished(airflow, EXTRACT_DAG, run_id),
                               timeout=300)
        assert (run["state"], run["run_type"], run["conf"]) == ("success", "manual", conf), run

        consumer = KafkaConsumer(airflow.env["PIPELINE_KAFKA_TOPIC"], bootstrap_servers=settings.kafka_bootstrap,
                                 auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
                                 consumer_timeout_ms=20_000)
        published = {message.key.decode(): json.loads(message.value) for message in consumer}
        consumer.close()
        assert lead_ids <= set(published), "the inserted leads reach the topic"

        # Unpaused at creation with a one-minute schedule: the scheduler starts runs by itself.
        scheduled = airflow.wait_for(
            "a scheduled extraction that succeeded",
            lambda: [r for r in airflow.runs(EXTRACT_DAG) if r["run_type"] == "scheduled" and r["state"] == "success"],
            timeout=180)
        assert scheduled
    finally:
        airflow.set_paused(EXTRACT_DAG, True)


def test_continuous_supervisor_keeps_one_driver_and_scheduled_watchdog_sees_it_healthy(airflow_instance):
    airflow = airflow_instance
    lock = StreamOpsConfig.load(airflow.env).files.driver_lock
    checkpoints = airflow.env["PIPELINE_STREAM_CHECKPOINT_ROOT"]
    most_drivers_seen = 0

    def one_driver():
        nonlocal most_drivers_seen
        holder, jvms = lock.holder(), driver_jvms(checkpoints)
        most_drivers_seen = max(most_drivers_seen, len(jvms))
        return holder if holder and jvms == {holder.pid} else None

    def healthy_watchdog_run(since: dt.datetime):
        one_driver()
        for run in airflow.runs(WATCHDOG_DAG):
            if run["run_type"] == "scheduled" and run["state"] == "success" and _started(run) > since:
                assessment = airflow.return_value(WATCHDOG_DAG, run["dag_run_id"], "assess")
                if assessment["state"] == "healthy":
                    return run, assessment
        return None

    holder = None
    try:
        holder = airflow.wait_for("the supervised driver", one_driver, timeout=300)
        running = [r for r in airflow.runs(SUPERVISOR_DAG) if r["state"] == "running"]
        assert [r["run_type"] for r in running] == ["scheduled"], running

        run, assessment = airflow.wait_for("a scheduled watchdog run that saw the driver healthy",
                                           lambda: healthy_watchdog_run(holder.started_at), timeout=240)
        assert "driver alive" in assessment["reason"], assessment
        assert one_driver() == holder, "the driver the watchdog judged is still the one running"
        assert most_drivers_seen == 1, f"{most_drivers_seen} drivers at once on the checkpoint"
    finally:
        # Off switch first (pause), so the continuous schedule does not start another run; then failing the run
        # makes Airflow kill the task, whose on_kill stops the driver.
        for dag_id in (WATCHDOG_DAG, SUPERVISOR_DAG):
            airflow.set_paused(dag_id, True)
        for run in airflow.runs(SUPERVISOR_DAG):
            if run["state"] in ("running", "queued"):
                airflow.fail_run(SUPERVISOR_DAG, run["dag_run_id"])
    if holder:
        airflow.wait_for("the driver stopped by on_kill", lambda: not lock.is_held(), timeout=120)
        assert not pid_alive(holder.pid)
