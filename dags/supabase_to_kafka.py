"""
### supabase_to_kafka

Publishes every change of the Supabase tables to the Kafka topic `eventos`, one mapped task per entity of the
registry (`include/entities.py`, today `lead` and `chat_session`).

Each task reads keyset pages on `(updated_at, id)` after the entity's cursor (table `extract_cursors` in the
warehouse), publishes them with an idempotent `acks=all` producer, and moves the cursor only after the broker
acknowledged the whole page. Every run re-reads a lookback window before the cursor, so rows committed late
with an older `updated_at` are not lost; downstream upserts are idempotent. Deleted rows (captured by trigger
in `deleted_records`) are published as tombstones under a cursor of their own. Rows that cannot be published
go to `dead_letters` (stage `extract`) without stopping the page.

**Params**
- `from_timestamp`: backfill / replay every row with `updated_at` at or after this ISO time (with offset).
- `lookback_seconds`: override the lookback window for this run (default `PIPELINE_EXTRACT_LOOKBACK_SECONDS`).

**Settings**: `PIPELINE_EXTRACT_SCHEDULE` (default every 10 minutes, read when the DAG file is parsed),
`PIPELINE_EXTRACT_SOURCE` (`postgres` through connection `supabase_postgres`, or `rest` through `supabase_api`),
`PIPELINE_EXTRACT_PAGE_SIZE`. Connections: `warehouse_postgres`, `kafka_default`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from include.entities import EXTRACTED
from include.extract.config import schedule_from_environ
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
    },
)
def supabase_to_kafka():
    @task(outlets=[EVENTOS_TOPIC], map_index_template="{{ task.op_kwargs['entity_name'] }}")
    def extract(entity_name: str, params: dict | None = None) -> dict:
        from include.extract.airflow_tasks import extract_entity_task

        return extract_entity_task(entity_name, params or {})

    extract.expand(entity_name=[entity.name for entity in EXTRACTED])


supabase_to_kafka()
