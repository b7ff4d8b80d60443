"""
### stream_deploy

Deploys a new version of the streaming job, guarded by data-quality gates. Trigger it by hand with `version`.

1. `gate_before` (DataQualitySensor): the data is consistent *before* anything changes — Postgres rows vs
   Elasticsearch documents vs Supabase rows per entity, dead letters in the window, heartbeat freshness, Kafka
   lag. If it fails the deploy is refused and the running version is not touched.
2. `package`: the working tree packaged as release `version` (kept as is if that release exists: releases are
   immutable, so the previous one is always there to go back to).
3. `switch`: selects `version` and stops the running driver cleanly (SIGTERM, SIGKILL after the grace); the
   supervisor (`stream_supervisor`) submits the new version on the same checkpoint at once.
4. `wait_healthy`: a driver of the new version completes a batch (or, with nothing to process, outlives the
   startup grace `PIPELINE_WATCHDOG_STARTUP_GRACE_SECONDS`) and is judged healthy three times in a row, within
   `PIPELINE_WATCHDOG_RECOVERY_SECONDS`. A crash of the new version fails at once with the cause from its log;
   the supervisor does not resubmit it but waits for the restore.
5. `gate_after`: the data-quality gate again, on what the new version wrote.
6. `restore` runs only when a step failed: if the new version was switched in, the previous one is selected and
   restarted and must be healthy again; either way the run fails with the reason of the failed step.

Gates wait up to `PIPELINE_DEPLOY_GATE_TIMEOUT_SECONDS` (read when the DAG file is parsed) for data that is
still catching up; their report (XCom `dq_report`) is the table in the task log.
"""

from __future__ import annotations

from airflow.sdk import Param, TriggerRule, dag, task
from data_quality_sensor import REPORT_XCOM_KEY, DataQualitySensor

from include.orchestration.assets import STREAM_RELEASE, sink_assets
from include.orchestration.config import deploy_gate_timeout
from include.orchestration.dag_defaults import dag_arguments
from include.orchestration.releases import VERSION_PATTERN

GATE_TIMEOUT = deploy_gate_timeout()


@dag(
    schedule=None,
    max_active_runs=1,
    doc_md=__doc__,
    **dag_arguments(tags=["streaming", "deploy", "data-quality"]),
    params={"version": Param(type="string", pattern=VERSION_PATTERN.pattern,
                             description="the job version to deploy (letters, digits, '.', '_', '-')")},
)
def stream_deploy():
    def gate(task_id: str) -> DataQualitySensor:
        return DataQualitySensor(task_id=task_id, timeout=GATE_TIMEOUT.total_seconds(),
                                 poke_interval=max(5.0, GATE_TIMEOUT.total_seconds() / 10), inlets=sink_assets())

    @task
    def package(params: dict | None = None) -> dict:
        from include.orchestration.tasks import deploy_package

        return deploy_package(params["version"])

    @task(outlets=[STREAM_RELEASE])
    def switch(params: dict | None = None, ti=None) -> dict:
        from include.orchestration.tasks import deploy_switch, failure_reason_to_xcom

        with failure_reason_to_xcom(ti):
            return deploy_switch(params["version"])

    @task
    def wait_healthy(switched: dict, params: dict | None = None, ti=None) -> dict:
        from include.orchestration.tasks import deploy_wait_healthy, failure_reason_to_xcom

        with failure_reason_to_xcom(ti):
            return deploy_wait_healthy(params["version"], switched["since"])

    @task(trigger_rule=TriggerRule.ONE_FAILED, outlets=[STREAM_RELEASE])
    def restore(packaged: dict, params: dict | None = None, ti=None) -> None:
        from include.orchestration.tasks import FAILURE_XCOM_KEY, deploy_restore

        reasons = []
        for task_id in ("gate_before", "switch", "wait_healthy", "gate_after"):
            report = ti.xcom_pull(task_ids=task_id, key=REPORT_XCOM_KEY)
            if report and not report["passed"]:
                reasons.append(f"{task_id}: " + "; ".join(report["reasons"]))
            failure = ti.xcom_pull(task_ids=task_id, key=FAILURE_XCOM_KEY)
            if failure:
                reasons.append(f"{task_id}: {failure}")
        deploy_restore(params["version"], packaged["previous"] if packaged else None,
                       " | ".join(reasons) or "a step failed (see its log)")

    packaged = package()
    switched = switch()
    gate_after = gate("gate_after")
    [gate("gate_before"), packaged] >> switched
    wait_healthy(switched) >> gate_after
    gate_after >> restore(packaged)


stream_deploy()
