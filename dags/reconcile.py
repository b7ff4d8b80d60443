"""
### reconcile

Proves, id by id, that Postgres holds what the Supabase source holds and Elasticsearch what Postgres holds, one
mapped task per entity of the registry (`include/entities.py`), and repairs what differs.

1. `compare` (always a dry run): per entity, Postgres against the source (extracted entities) and Elasticsearch
   against Postgres. Each store sums a hash of every `id:version` per id range (SQL on the Postgres side, streamed
   pages on Elasticsearch's); only ranges whose sums differ are listed. The result (XCom) is the drift by kind -
   `missing`, `extra`, `older`, `newer` - per store, a sample of ids, and the repair it would make.
2. `repair` (skipped unless `dry_run` is false): compares again and repairs: Elasticsearch from Postgres (bulk with
   the sink's external versions; extra documents deleted), Postgres from the source (the source's current rows of
   the drifted ids re-published to Kafka, tombstones for ids the source no longer holds, so the streaming job
   applies them). A store newer than its reference is reported, not overwritten.

The daily run only reports (`dry_run` defaults to true): read `compare`'s XCom, then trigger with
`{"dry_run": false}`. The deploy gate (`stream_deploy`, DataQualitySensor) refuses while the drift of any entity and
store exceeds `PIPELINE_DQ_MAX_DRIFT` (0).

**Params**
- `dry_run`: when false, `repair` runs after `compare`.

Schemas and index prefix are the streaming job's (`PIPELINE_STREAM_PG_SCHEMA`, `PIPELINE_STREAM_ES_INDEX_PREFIX`,
`PIPELINE_DQ_SOURCE_SCHEMA`). Connections: `warehouse_postgres`, `supabase_postgres`, `elasticsearch_default`,
`kafka_default`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from include.entities import ENTITIES
from include.orchestration.dag_defaults import dag_arguments

ENTITY_NAMES = [entity.name for entity in ENTITIES]


@dag(
    dag_id="reconcile",
    doc_md=__doc__,
    schedule="@daily",
    # Two runs repairing at once would publish the same rows twice (harmless, but twice the work).
    max_active_runs=1,
    # A million rows per entity take minutes; an hour means something hangs.
    **dag_arguments(tags=["reconcile", "data-quality"], execution_timeout=dt.timedelta(hours=1)),
    params={"dry_run": Param(True, type="boolean", description="Only report the drift; false also repairs it")},
)
def reconcile():
    @task(map_index_template="{{ task.op_kwargs['entity_name'] }}")
    def compare(entity_name: str) -> dict:
        from include.reconcile.airflow_tasks import reconcile_task

        return reconcile_task(entity_name, dry_run=True)

    @task(map_index_template="{{ task.op_kwargs['entity_name'] }}")
    def repair(entity_name: str, params: dict | None = None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from include.reconcile.airflow_tasks import reconcile_task

        if (params or {}).get("dry_run", True):
            raise AirflowSkipException("dry run: trigger with {\"dry_run\": false} to repair")
        return reconcile_task(entity_name, dry_run=False)

    compare.expand(entity_name=ENTITY_NAMES) >> repair.expand(entity_name=ENTITY_NAMES)


reconcile()
