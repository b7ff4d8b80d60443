"""
### stream_supervisor

Keeps the streaming job (`spark/streaming_job.py`: topic `eventos` → Postgres and Elasticsearch) running, through
`SparkSubmitOperator` and the `spark_default` connection.

**Design: a `@continuous` DAG with one active run, whose task owns the driver.** A streaming query is a process
that should never end, so exactly one thing must own its lifetime. Here it is the `run_driver` task
(`SupervisedSparkSubmitOperator`): it submits the job, waits on it, and when the driver ends it records why (the
cause read from the driver's log) and resubmits — at once after a restart someone asked for (deploy, watchdog),
after an exponential backoff after a failure. After `PIPELINE_SUPERVISOR_MAX_FAILURES` failures within the window
it gives up and fails with the cause; Airflow retries it (with backoff) and, the schedule being continuous, the
next run starts as soon as this one ends. Marking the task failed or clearing it calls `on_kill`, which stops the
driver. Pausing the DAG is the off switch. The price is one worker slot held permanently.
Alternatives considered: scheduled available-now runs (simpler, but each run pays a ~30 s JVM start and latency
grows to the schedule interval; kept as the `trigger` param for catch-up runs), and a detached driver started by
a short task (nobody would own it: `on_kill` could not reach it and a dead driver would be noticed only by the
watchdog).

**Never two drivers on the checkpoint.** Every spark-submit runs under a wrapper that takes an exclusive `flock`
on `<checkpoint>/_supervisor/driver.lock` and `exec`s spark-submit with the descriptor inherited: the lock belongs
to the driver JVM itself and the kernel releases it when that process dies, SIGKILL included. A second driver
exits before starting. The task also holds `supervisor.lock` for its lifetime, so a driver whose supervisor died
is recognised as an orphan and stopped before a new one starts.

**Tasks.** `release` makes sure a release is selected (on first use it packages the working tree — the `spark`
and `include` packages as the `--py-files` zip — as `tree-<digest>`; `stream_deploy` selects later versions).
`run_driver` supervises it, re-reading the selected release before every submission.

**Params.** `trigger`: `processing-time` (default, runs until stopped) or `available-now` (process what Kafka
holds, then succeed: catch-up runs, `airflow dags test`).

**Settings** (include/orchestration/config.py): checkpoint root, query name, trigger interval, stop grace,
failure limit and window, backoff.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task
from streaming_supervisor import SupervisedSparkSubmitOperator

from include.connections import SPARK_CONN_ID
from include.orchestration.assets import STREAM_RELEASE, kafka_topic, sink_assets
from include.orchestration.dag_defaults import dag_arguments
from spark.job_spec import PROCESSING_TIME, TRIGGER_KINDS


@dag(
    schedule="@continuous",
    max_active_runs=1,
    doc_md=__doc__,
    # A driver that keeps crashing gets a minute before the next attempt, doubling up to the default cap.
    **dag_arguments(tags=["streaming", "spark", "supervisor"], retry_delay=dt.timedelta(minutes=1)),
    params={"trigger": Param(PROCESSING_TIME, enum=list(TRIGGER_KINDS),
                             description="processing-time: run until stopped; available-now: catch up, then end")},
)
def stream_supervisor():
    @task(inlets=[STREAM_RELEASE])
    def release() -> dict:
        from include.orchestration.tasks import ensure_release

        return ensure_release()

    release() >> SupervisedSparkSubmitOperator(
        task_id="run_driver",
        conn_id=SPARK_CONN_ID,
        trigger="{{ params.trigger }}",
        inlets=[kafka_topic()],
        outlets=sink_assets(),
    )


stream_supervisor()
