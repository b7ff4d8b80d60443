"""The reconciler as an Airflow task: `run_entity` over Airflow's connections. Imported inside the task callable
only, so parsing the DAG file loads neither providers nor drivers."""

from __future__ import annotations

from contextlib import ExitStack, closing

from include.connections import (ELASTICSEARCH_CONN_ID, SUPABASE_DB_CONN_ID, WAREHOUSE_CONN_ID, elasticsearch_client,
                                 postgres_connection)
from include.entities import BY_NAME
from include.extract.publisher import KafkaPublisher
from include.orchestration.config import StreamOpsConfig
from include.orchestration.tasks import kafka_bootstrap
from include.reconcile.service import run_entity


def reconcile_task(entity_name: str, *, dry_run: bool) -> dict:
    """Compare one entity across the source, Postgres and Elasticsearch; repair unless `dry_run`. The schemas and
    index prefix are the streaming job's (PIPELINE_STREAM_PG_SCHEMA, ..._ES_INDEX_PREFIX, PIPELINE_DQ_SOURCE_SCHEMA)."""
    config = StreamOpsConfig.load()
    settings = config.settings
    with ExitStack() as stack:
        warehouse = stack.enter_context(closing(postgres_connection(WAREHOUSE_CONN_ID)))
        source = stack.enter_context(closing(postgres_connection(SUPABASE_DB_CONN_ID)))
        es = stack.enter_context(closing(elasticsearch_client(ELASTICSEARCH_CONN_ID)))
        publisher = None if dry_run else stack.enter_context(
            KafkaPublisher(kafka_bootstrap(), settings.kafka_topic, client_id="reconcile"))
        return run_entity(BY_NAME[entity_name], warehouse=warehouse, es=es, source=source, publisher=publisher,
                          dry_run=dry_run, warehouse_schema=config.pg_schema, source_schema=config.source_schema,
                          index_prefix=config.es_index_prefix, max_payload_bytes=settings.extract_max_payload_bytes)
