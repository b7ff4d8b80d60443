"""
### stream_watchdog

Checks the streaming job every `PIPELINE_WATCHDOG_INTERVAL_MINUTES` (default 5; read from the scheduler's
environment) and brings it back when it is stuck.

1. `assess` observes the driver lock (is a driver alive, since when), the heartbeat table and the checkpoint's
   commit log (when did a batch last complete) and Kafka's end offsets against the committed offsets, and
   classifies the job with the pure `classify_job_health`: **healthy**, **lagging** (alive, progressing, behind by
   more than `PIPELINE_WATCHDOG_MAX_LAG`), **stalled** (alive, messages waiting and no batch completed for
   `PIPELINE_WATCHDOG_STALL_SECONDS`) or **dead** (no driver holds the checkpoint lock). An idle query reports
   nothing in Spark 4, so silence without waiting messages is healthy.
2. `recover`, for stalled or dead: judges again, records a restart request, kills what is left of the driver
   (its whole session, with SIGKILL: a stalled driver's batch is lost either way and a hung JVM may never honour
   SIGTERM), and waits up to `PIPELINE_WATCHDOG_RECOVERY_SECONDS` for the supervisor's new driver to be healthy.
   A forced restart counts as a failure.
3. `check_failures` (runs whatever `recover` did) fails the run when the driver failed
   `PIPELINE_SUPERVISOR_MAX_FAILURES` times within `PIPELINE_SUPERVISOR_FAILURE_WINDOW_MINUTES` (crashes and forced
   restarts), naming the causes read from the driver logs, the latest first, and the log file. The supervisor
   gives up at the same limit counting crashes only, so a flapping job both stops being resubmitted and alerts.

4. `check_slots` (beside the others) fails the run when a logical replication slot of the Supabase database
   holds back more WAL than `PIPELINE_EXTRACT_CDC_MAX_RETAINED_WAL_BYTES`, was invalidated, or (the cdc
   extraction's own) was last confirmed longer ago than `PIPELINE_EXTRACT_CDC_MAX_CONFIRM_AGE_SECONDS`, or is
   recorded by the extraction but missing: a slot nobody reads keeps WAL until the source's disk fills.

The watchdog never submits a driver itself: `stream_supervisor` owns the driver, so there is one owner and the
driver lock is never contended. If no supervisor runs, `recover` fails saying so.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import TriggerRule, dag, task

from include.orchestration.assets import sink_assets
from include.orchestration.config import watchdog_interval
from include.orchestration.dag_defaults import dag_arguments


@dag(
    schedule=watchdog_interval(),
    max_active_runs=1,
    doc_md=__doc__,
    # Retried sooner than the default: a watchdog run is due again within minutes.
    **dag_arguments(tags=["streaming", "watchdog", "monitoring"], retry_delay=dt.timedelta(seconds=20),
                    retry_exponential_backoff=False),
)
def stream_watchdog():
    @task(inlets=sink_assets())
    def assess() -> dict:
        from include.orchestration.tasks import watchdog_assess

        return watchdog_assess()

    @task
    def recover(assessment: dict) -> dict:
        from include.orchestration.tasks import watchdog_recover

        return watchdog_recover(assessment)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def check_failures() -> dict:
        from include.orchestration.tasks import watchdog_check_failures

        return watchdog_check_failures()

    @task
    def check_slots() -> list[dict]:
        from include.extract.airflow_tasks import check_slots_task

        return check_slots_task()

    recover(assess()) >> check_failures()
    check_slots()


stream_watchdog()
