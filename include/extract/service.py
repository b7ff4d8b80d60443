"""Entry points of the extraction outside Airflow, and the user's old functions with their old signatures.

Connections come from `include.settings`; `Endpoints` lets a test or a benchmark point one run at a source
schema, warehouse schema and topic of its own.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import uuid
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from typing import Iterator

from include.connections import pg_session
from include.contract import encode, message_key, now_utc, record_message
from include.entities import BY_NAME, EVENTO, EXTRACTED, LEAD, Entity
from include.extract.config import ExtractConfig
from include.extract.extractor import EntityResult, RunOptions, extract_entity
from include.extract.publisher import KafkaPublisher
from include.extract.sources import PostgresSource, Source, SupabaseRestSource
from include.extract.state import ExtractState
from include.settings import Settings, SettingsError, load_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoints:
    source_schema: str = "public"
    # None: the warehouse connection's default search_path.
    warehouse_schema: str | None = None
    topic: str | None = None
    bootstrap: str | None = None


@dataclass(frozen=True)
class Pipeline:
    source: Source
    state: ExtractState
    publisher: KafkaPublisher

    def run(self, entities: tuple[Entity, ...], options: RunOptions) -> list[EntityResult]:
        return [extract_entity(entity, self.source, self.state, self.publisher, options) for entity in entities]


def _open_source(stack: ExitStack, settings: Settings, config: ExtractConfig, endpoints: Endpoints) -> Source:
    if config.source == "rest":
        if not (settings.supabase_url and settings.supabase_key):
            raise SettingsError("PIPELINE_EXTRACT_SOURCE=rest needs PIPELINE_SUPABASE_URL and PIPELINE_SUPABASE_KEY")
        return SupabaseRestSource.connect(settings.supabase_url, settings.supabase_key, schema=endpoints.source_schema,
                                          clock_margin=config.rest_clock_margin)
    connection = stack.enter_context(closing(pg_session(settings, settings.pg_source_db)))
    return PostgresSource(connection, schema=endpoints.source_schema)


def _open_publisher(stack: ExitStack, settings: Settings, endpoints: Endpoints) -> KafkaPublisher:
    return stack.enter_context(KafkaPublisher(endpoints.bootstrap or settings.kafka_bootstrap,
                                              endpoints.topic or settings.kafka_topic))


@contextmanager
def open_pipeline(settings: Settings | None = None, config: ExtractConfig | None = None,
                  endpoints: Endpoints = Endpoints()) -> Iterator[Pipeline]:
    settings = settings or load_settings()
    config = config or ExtractConfig.load()
    with ExitStack() as stack:
        source = _open_source(stack, settings, config, endpoints)
        warehouse = stack.enter_context(closing(
            pg_session(settings, settings.pg_warehouse_db, endpoints.warehouse_schema)))
        publisher = _open_publisher(stack, settings, endpoints)
        yield Pipeline(source, ExtractState(warehouse), publisher)


def run_extraction(entity_names: list[str] | None = None, options: RunOptions | None = None, *,
                   settings: Settings | None = None, config: ExtractConfig | None = None,
                   endpoints: Endpoints = Endpoints()) -> list[EntityResult]:
    config = config or ExtractConfig.load()
    entities = tuple(BY_NAME[name] for name in entity_names) if entity_names else EXTRACTED
    with open_pipeline(settings, config, endpoints) as pipeline:
        return pipeline.run(entities, options or config.run_options())


def run_cdc(*, settings: Settings | None = None, config: ExtractConfig | None = None,
            endpoints: Endpoints = Endpoints(), resnapshot: bool = False):
    """One run of the cdc extraction (include/extract/cdc.py) over every extracted entity."""
    from include.extract.cdc import CdcExtraction

    settings = settings or load_settings()
    config = config or ExtractConfig.load()
    with ExitStack() as stack:
        warehouse = stack.enter_context(closing(
            pg_session(settings, settings.pg_warehouse_db, endpoints.warehouse_schema)))
        extraction = CdcExtraction(
            settings.pg_dsn(settings.pg_source_db), warehouse, _open_publisher(stack, settings, endpoints),
            slot=settings.extract_cdc_slot, publication=settings.extract_cdc_publication,
            schema=endpoints.source_schema, page_size=config.page_size, max_payload_bytes=config.max_payload_bytes)
        return extraction.run(resnapshot=resnapshot)


def sync_leads_to_kafka(limit: int | None = None, hours_ago: float | None = None, *,
                        settings: Settings | None = None, config: ExtractConfig | None = None,
                        endpoints: Endpoints = Endpoints()) -> dict:
    """Publish leads changed since the cursor (or in the last `hours_ago` hours), at most `limit` of them,
    then tombstones for deleted leads. Errors raise; they are not folded into the returned status."""
    config = config or ExtractConfig.load()
    from_timestamp = None if hours_ago is None else now_utc() - dt.timedelta(hours=hours_ago)
    options = config.run_options(from_timestamp=from_timestamp, max_rows=limit)
    [result] = run_extraction([LEAD.name], options, settings=settings, config=config, endpoints=endpoints)
    dead_letters = result.records.dead_letters + result.deletions.dead_letters
    return {
        "status": "success" if not dead_letters else "partial",
        "total_processed": result.records.published,
        "tombstones": result.deletions.published,
        "dead_letters": dead_letters,
        "pages": result.records.pages + result.deletions.pages,
        "cursor": result.records.cursor and result.records.cursor.version.isoformat(),
        "from_timestamp": from_timestamp and from_timestamp.isoformat(),
    }


def get_supabase_stats(*, settings: Settings | None = None, config: ExtractConfig | None = None,
                       endpoints: Endpoints = Endpoints(), window: dt.timedelta = dt.timedelta(hours=24)) -> dict:
    """Row counts per extracted entity in the source: `total_leads`, `leads_updated_last_24h`, and so on (the
    latter only for a table with a version column)."""
    settings = settings or load_settings()
    config = config or ExtractConfig.load()
    since = now_utc() - window
    hours = int(window.total_seconds() // 3600)
    stats: dict = {"source": config.source, "measured_at": now_utc().isoformat()}
    with ExitStack() as stack:
        source = _open_source(stack, settings, config, endpoints)
        for entity in EXTRACTED:
            stats[f"total_{entity.table}"] = source.count(entity)
            if entity.version_column:
                stats[f"{entity.table}_updated_last_{hours}h"] = source.count(entity, since=since)
    return stats


def inject_event(evento: str, valor, usuario: str | None, *, settings: Settings | None = None,
                 endpoints: Endpoints = Endpoints()) -> dict:
    """Publish one generic event (uuid id, occurred now) on the events topic for `eventos_raw`; returns it."""
    if not evento:
        raise ValueError("evento must be a non-empty string")
    settings = settings or load_settings()
    row = {
        EVENTO.key: uuid.uuid4(),
        "evento": evento,
        # Decimal keeps the numeric exact on its way to the warehouse's numeric column.
        "valor": None if valor is None else decimal.Decimal(str(valor)),
        "usuario": usuario,
        EVENTO.version_column: now_utc(),
    }
    message = record_message(EVENTO, row)
    value = encode(message)
    with ExitStack() as stack:
        _open_publisher(stack, settings, endpoints).publish([(message_key(EVENTO, message), value)])
    log.info("published event %s (%s)", message[EVENTO.key], evento)
    return json.loads(value)
