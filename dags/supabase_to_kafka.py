"""
### supabase_to_kafka

Publishes every change of the Supabase tables of the registry (`include/entities.py`, today `leads` and
`chat_sessions`) to the Kafka topic `eventos`.

With `PIPELINE_EXTRACT_SOURCE=cdc` (the default) the DAG has one task, `extract_changes`: it reads the source's
write-ahead log through the logical replication slot `PIPELINE_EXTRACT_CDC_SLOT` (a first run copies the existing
rows first), publishes every insert, update and delete up to the WAL end at the run's start, each with its source
position, and confirms the slot's position only after the broker acknowledged everything before it
(`include/extract/cdc.py`). It needs nothing on the tables: `chat_sessions` has no `updated_at`, and its rows are
ordered by source position.

With the pollers (`postgres`, `rest`: for a project reachable only through its REST API) the DAG maps one task per
entity. Each reads keyset pages on `(updated_at, id)` after the entity's cursor (table `extract_cursors` in the
warehouse), publishes them with an idempotent `acks=all` producer, and moves the cursor only after the broker
acknowledged the whole page. Every run re-reads a lookback window before the cursor, so rows committed late
with an older `updated_at` are not lost; downstream upserts are idempotent. Deleted rows (captured by trigger
in `deleted_records`) are published as tombstones under a cursor of their own. Rows that cannot be published
go to `dead_letters` (stage `extract`) without stopping the page. An entity without a version column
(`chat_session`) fails its task at once, saying it needs cdc.

**Params**
- `from_timestamp`: backfill / replay every row with `updated_at` at or after this ISO time (with offset).
- `lookback_seconds`: override the lookback window for this run (default `PIPELINE_EXTRACT_LOOKBACK_SECONDS`).
- `resnapshot` (cdc): drop the slot and start over with an initial snapshot of every row. The only way on after
  the run failed with "replication slot ... was invalidated" or "... missing on the source": the changes since
  the slot's last confirmation are gone from the WAL, and a new snapshot is what brings the sinks level again.

**Settings**: `PIPELINE_EXTRACT_SCHEDULE` (default every 10 minutes) and `PIPELINE_EXTRACT_SOURCE` (both read
when the DAG file is parsed: `postgres` through connection `supabase_postgres`, `rest` through `supabase_api`,
`cdc` through `supabase_postgres` with REPLICATION rights), `PIPELINE_EXTRACT_PAGE_SIZE`,
`PIPELINE_EXTRACT_CDC_*`. Connections: `warehouse_postgres`, `kafka_default`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from include.entities import EXTRACTED
from include.extract.config import schedule_from_environ, source_from_environ
from include.orchestration.assets import kafka_topic
from include.orchestration.dag_defaults import dag_arguments

# The stream supervisor's inlet, declared once: a name fixed here and a URI following the configured topic would
# give two assets one URI under another topic, and whichever Airflow activated first would leave the other inactive.
EVENTOS_TOPIC = kafka_topic()


@dag(
    dag_id="supabase_to_kafka",
    doc_md=__doc__,
    schedule=schedule_from_environ(),
    # Runs share one cursor per entity: two at once would publish the same pages twice.
    max_active_runs=1,
    # A run that hangs (a broker that never acknowledges) must end, so the next scheduled run can start.
    **dag_arguments(tags=["extract", "supabase", "kafka"], retries=3, execution_timeout=dt.timedelta(minutes=30)),
    params={
        "from_timestamp": Param(None, type=["null", "string"],
                                description="Replay rows with updated_at >= this ISO-8601 time (with offset)"),
        "lookback_seconds": Param(None, type=["null", "integer"], minimum=0,
                                  description="Lookback window for this run; empty uses the setting"),
        "resnapshot": Param(False, type="boolean",
                            description="cdc: drop the replication slot and start over with an initial snapshot"),
    },
)
def supabase_to_kafka():
    @task(outlets=[EVENTOS_TOPIC], map_index_template="{{ task.op_kwargs['entity_name'] }}")
    def extract(entity_name: str, params: dict | None = None) -> dict:
        from include.extract.airflow_tasks import extract_entity_task

        return extract_entity_task(entity_name, params or {})

    @task(outlets=[EVENTOS_TOPIC])
    def extract_changes(params: dict | None = None) -> dict:
        from include.extract.airflow_tasks import extract_changes_task

        return extract_changes_task(params or {})

    if source_from_environ() == "cdc":  # every table through one slot
        extract_changes()
    else:
        extract.expand(entity_name=[entity.name for entity in EXTRACTED])


supabase_to_kafka()
