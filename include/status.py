"""The pipeline's status in one call: streaming job health, Kafka lag, rows per table against documents per index
against source rows, the drift (ids a store lacks, holds extra or at another version than its reference, from
include/reconcile), dead letters (per entity and per reason class, validator errors apart: each is a bug), Kafka
offset ranges the job never read (lost_offsets), the source's logical replication slots (retained WAL, age of the
last confirmation) and the data-quality verdict. Used by the MCP server and the demo report.

It reads the same observations and the same pure verdict functions as the watchdog and the DQ sensor, through
connections built from the settings rather than Airflow connections, so it runs anywhere the stack runs.
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack, closing
from dataclasses import asdict


def pipeline_status() -> dict:
    from elasticsearch import Elasticsearch

    from include.connections import source_session, warehouse_session
    from include.extract.cdc import observe_slots
    from include.orchestration.config import StreamOpsConfig
    from include.orchestration.health import classify_job_health
    from include.orchestration.observe import gather_quality_counts, observe_job
    from include.orchestration.quality import QualityThresholds, evaluate_quality

    config = StreamOpsConfig.load()
    settings = config.settings
    thresholds = QualityThresholds.load()
    with ExitStack() as stack:
        warehouse = stack.enter_context(warehouse_session(settings))
        source = stack.enter_context(source_session(settings))
        es = stack.enter_context(closing(Elasticsearch(settings.es_url, request_timeout=30)))
        counts = gather_quality_counts(
            warehouse=warehouse, source=source, es=es, bootstrap=settings.kafka_bootstrap,
            topic=settings.kafka_topic, checkpoint=config.checkpoint, query_name=config.query_name,
            window_minutes=thresholds.window_minutes, warehouse_schema=config.pg_schema,
            index_prefix=config.es_index_prefix, source_schema=config.source_schema, compare_content=True)
        slots = observe_slots(source, warehouse, settings.extract_cdc_max_retained_wal_bytes,
                              settings.extract_cdc_max_confirm_age_seconds)
        health = classify_job_health(
            observe_job(config.checkpoint, config.query_name, warehouse, settings.kafka_bootstrap,
                        settings.kafka_topic, config.pg_schema), config.health)
    report = evaluate_quality(counts, thresholds)
    return {
        "query_name": config.query_name,
        "job_health": health.state.value,
        "job_health_reason": health.reason,
        "heartbeat_age_seconds": counts.heartbeat_age_seconds,
        "kafka_lag": counts.kafka_lag,
        "dead_letters": sum(row.dead_letters for row in counts.entities) + counts.unattributed_dead_letters,
        "dead_letters_by_reason": dict(counts.dead_letters_by_reason),
        "validator_errors": counts.validator_errors,
        "lost_offsets": [{**asdict(lost), "offsets": lost.offsets} for lost in counts.lost_offsets],
        "dq_passed": report.passed,
        "dq_reasons": list(report.reasons),
        "counts": [
            {"entity": row.entity, "postgres_rows": row.postgres_rows, "es_docs": row.es_docs,
             "source_rows": row.source_rows, "dead_letters": row.dead_letters}
            for row in counts.entities
        ],
        "drift": [{**dataclasses.asdict(d), "total": d.total} for d in counts.drift],
        "table": report.table,
        # Logical replication slots of the source (the cdc extraction's and any other): WAL each holds back, age
        # of the extraction's last confirmation, and what is over its threshold.
        "cdc_slots": [slot.as_dict() for slot in slots],
        "cdc_slot_problems": [problem for slot in slots for problem in slot.problems],
    }
