"""
### checkpoint_purge

Weekly: removes streaming checkpoint folders (under `PIPELINE_STREAM_CHECKPOINT_ROOT`) that belong to no registered
or running query and did not change within `PIPELINE_CHECKPOINT_RETENTION_DAYS` (7). Kept, always: the configured
query's folder, folders of queries that sent a heartbeat within the retention, folders whose driver lock is held,
symlinks (never followed), anything that is not a folder. Each folder is removed while holding its driver lock, so
no driver can start in it meanwhile. The log lists every folder with its bytes or the reason it stays, and the
bytes freed.

Checkpoint retention inside a live query is Spark's job (`spark.sql.streaming.minBatchesToRetain`), not this DAG's.

**Params.** `dry_run`: list what would go and the bytes, remove nothing. Empty (default): a dry run for manual
runs, a real purge for scheduled ones.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from include.orchestration.dag_defaults import dag_arguments


@dag(
    schedule="@weekly",
    max_active_runs=1,
    doc_md=__doc__,
    **dag_arguments(tags=["streaming", "maintenance", "checkpoints"]),
    params={"dry_run": Param(None, type=["null", "boolean"],
                             description="true: only list; false: remove; empty: dry run when triggered by hand")},
)
def checkpoint_purge():
    @task
    def purge(params: dict | None = None, dag_run=None) -> dict:
        from include.orchestration.purge import effective_dry_run
        from include.orchestration.tasks import purge_checkpoints

        return purge_checkpoints(effective_dry_run(params.get("dry_run"), dag_run.run_type))

    purge()


checkpoint_purge()
