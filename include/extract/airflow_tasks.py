"""The extraction as an Airflow task: the same `extract_entity`, wired to Airflow's connections.

Imported inside the task callable only, so parsing the DAG file loads neither providers nor drivers.
"""

from __future__ import annotations

import datetime as dt
from contextlib import ExitStack, closing
from typing import Any, Mapping

from include.connections import (SUPABASE_DB_CONN_ID, WAREHOUSE_CONN_ID, kafka_bootstrap, postgres_connection,
                                  postgres_conninfo, supabase_api)
from include.entities import BY_NAME
from include.extract.config import ExtractConfig, parse_from_timestamp
from include.extract.extractor import extract_entity, require_version_column
from include.extract.publisher import KafkaPublisher
from include.extract.sources import PostgresSource, Source, SupabaseRestSource
from include.extract.state import ExtractState
from include.settings import SettingsError, load_settings


def _source(stack: ExitStack, config: ExtractConfig) -> Source:
    if config.source == "rest":
        url, key = supabase_api()
        return SupabaseRestSource.connect(url, key, clock_margin=config.rest_clock_margin)
    return PostgresSource(stack.enter_context(closing(postgres_connection(SUPABASE_DB_CONN_ID))))


def extract_changes_task(params: Mapping[str, Any]) -> dict:
    """One run of the cdc extraction over every extracted entity; `params` are the DAG's (resnapshot)."""
    from include.extract.cdc import CdcExtraction

    config, settings = ExtractConfig.load(), load_settings()
    with ExitStack() as stack:
        warehouse = stack.enter_context(closing(postgres_connection(WAREHOUSE_CONN_ID)))
        publisher = stack.enter_context(KafkaPublisher(kafka_bootstrap(), settings.kafka_topic))
        extraction = CdcExtraction(postgres_conninfo(SUPABASE_DB_CONN_ID), warehouse, publisher, slot=settings.extract_cdc_slot,
                                   publication=settings.extract_cdc_publication, page_size=config.page_size,
                                   max_payload_bytes=config.max_payload_bytes)
        return extraction.run(resnapshot=bool(params.get("resnapshot"))).as_dict()


def check_slots_task() -> list[dict]:
    """The source's logical replication slots against the thresholds; fails naming every problem."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.extract.cdc import observe_slots

    settings = load_settings()
    with closing(postgres_connection(SUPABASE_DB_CONN_ID)) as source, \
            closing(postgres_connection(WAREHOUSE_CONN_ID)) as warehouse:
        slots = observe_slots(source, warehouse, settings.extract_cdc_max_retained_wal_bytes,
                              settings.extract_cdc_max_confirm_age_seconds)
    problems = [problem for slot in slots for problem in slot.problems]
    if problems:
        raise AirflowFailException("; ".join(problems))
    return [slot.as_dict() for slot in slots]


def extract_entity_task(entity_name: str, params: Mapping[str, Any]) -> dict:
    """Run one entity's extraction; `params` are the DAG's (from_timestamp, lookback_seconds). A configuration the
    poller cannot serve (an entity without a version column) fails the task without retries: no retry can fix it."""
    from airflow.sdk.exceptions import AirflowFailException

    entity = BY_NAME[entity_name]
    try:
        require_version_column(entity)
    except SettingsError as error:
        raise AirflowFailException(str(error)) from error
    config = ExtractConfig.load()
    lookback = params.get("lookback_seconds")
    options = config.run_options(
        from_timestamp=parse_from_timestamp(params.get("from_timestamp")),
        lookback=None if lookback is None else dt.timedelta(seconds=lookback),
    )
    bootstrap = kafka_bootstrap()
    with ExitStack() as stack:
        source = _source(stack, config)
        warehouse = stack.enter_context(closing(postgres_connection(WAREHOUSE_CONN_ID)))
        publisher = stack.enter_context(KafkaPublisher(bootstrap, load_settings().kafka_topic))
        result = extract_entity(entity, source, ExtractState(warehouse), publisher, options)
    return result.as_dict()
