"""Postgres sink: COPY a micro-batch into staging from the executors, then merge it set-based in one transaction.

Per batch: every task renders its Kafka rows as documents (spark/transforms.py: valid rows and rejects, each one
JSON object, with its Kafka position) and COPYs them into the UNLOGGED staging table under the batch's stage
token, in its own transaction (stream_staging.sql). Then ONE transaction runs stream_merge.sql: pick the newest
staged row per id, and per entity record tombstones in deleted_records, delete tombstoned rows that are not newer,
and upsert guarded by the version column; then insert the dead letters once per Kafka offset and clear the staged
rows. No statement is per row. Once the deletions are recorded, the rows Elasticsearch must get are handed to
`on_index_actions`, so the bulk can run while the upsert does. Any failure raises: the transaction rolls back and
the batch is replayed from the checkpoint.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import psycopg
from psycopg import sql
from pyspark.sql import DataFrame

from include.entities import ENTITIES, Entity
from include.schema import STREAM_STAGE_TABLE, quote_ident, render_sql_macro
from include.settings import Settings
from spark.transforms import DEAD_LETTER, DELETED, DOCUMENT, DOCUMENT_ID, DOCUMENT_VERSION, KAFKA_COLUMNS, KIND

log = logging.getLogger(__name__)

MERGE_SQL = "stream_merge.sql"
WINNERS_TABLE = "stream_winners"  # temporary, dropped at commit
# Staged rows older than this belong to an attempt that died before its merge; any merge sweeps them.
STALE_STAGE_AFTER = "1 hour"
# Document columns -> staging columns, in COPY order (after stage_token).
STAGED_COLUMNS = {KIND: "kind", DOCUMENT_ID: "id", DOCUMENT_VERSION: "version", DELETED: "deleted",
                  "timestamp": "kafka_timestamp", "partition": "kafka_partition", "offset": "kafka_offset",
                  DOCUMENT: "doc"}
STAGED_COUNTS_SCHEMA = "kind string, rows long"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")

# (kind, id, version in epoch microseconds, deleted, doc): a row Elasticsearch must get.
IndexAction = tuple[str, str, int, bool, str]


def check_schema_name(schema: str) -> str:
    """A search_path value that needs no quoting (lower-case identifier)."""
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"Postgres schema {schema!r} must be a lower-case identifier ([a-z_][a-z0-9_]*)")
    return schema


def connect(settings: Settings, schema: str | None = None, **kwargs) -> psycopg.Connection:
    """A warehouse session with the settings' statement timeout, optionally on another schema."""
    connection = psycopg.connect(settings.pg_dsn(settings.pg_warehouse_db), **kwargs)
    if schema:
        # SET rather than an `options` argument, which would replace the DSN's statement_timeout.
        connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(check_schema_name(schema))))
        if not connection.autocommit:
            connection.commit()
    return connection


def copy_statement() -> str:
    columns = ", ".join(quote_ident(c) for c in ("stage_token", *STAGED_COLUMNS.values()))
    return f"COPY {quote_ident(STREAM_STAGE_TABLE)} ({columns}) FROM STDIN"


def stage_partition(settings: Settings, schema: str | None, token: str, documents: Callable) -> Callable:
    """The mapInArrow function of one task: render its Kafka rows with `documents` (transforms.documents_of), COPY
    them under `token`, yield its row count per kind."""
    statement = copy_statement()

    def stage(batches):
        import pyarrow as pa

        counts: Counter = Counter()
        with connect(settings, schema) as connection, connection.cursor() as cursor:
            with cursor.copy(statement) as copy:
                for batch in batches:
                    rendered = documents(batch)
                    columns = [rendered.column(name).to_pylist() for name in STAGED_COLUMNS]
                    for row in zip(*columns):
                        copy.write_row((token, *row))
                    counts.update(columns[0])
        # Leaving the `with` block committed this task's rows.
        yield pa.RecordBatch.from_pydict({"kind": list(counts), "rows": list(counts.values())})

    return stage


@dataclass(frozen=True)
class MergeResult:
    staged: dict[str, int]  # kind -> rows, dead letters included
    upserted: dict[str, int]
    deleted: dict[str, int]
    dead_letters: int
    index_actions: int
    stage_seconds: float
    merge_seconds: float


def _entity_statements(entity: Entity) -> dict[str, str]:
    return {macro: render_sql_macro(MERGE_SQL, macro, entity=entity, winners=WINNERS_TABLE)
            for macro in ("record_deletions", "delete_tombstoned", "upsert")}


class PostgresSink:
    def __init__(self, settings: Settings, schema: str | None = None):
        self.settings = settings
        self.schema = check_schema_name(schema) if schema else None
        self._winners = render_sql_macro(MERGE_SQL, "winners", stage=STREAM_STAGE_TABLE, winners=WINNERS_TABLE)
        self._entity_statements = {entity: _entity_statements(entity) for entity in ENTITIES}
        self._index_actions = render_sql_macro(MERGE_SQL, "index_actions", winners=WINNERS_TABLE)
        self._dead_letters = render_sql_macro(MERGE_SQL, "insert_dead_letters", stage=STREAM_STAGE_TABLE)
        self._clear = render_sql_macro(MERGE_SQL, "clear_stage", stage=STREAM_STAGE_TABLE)

    def connect(self, **kwargs) -> psycopg.Connection:
        return connect(self.settings, self.schema, **kwargs)

    def stage(self, batch: DataFrame, token: str, documents: Callable) -> dict[str, int]:
        """Render a Kafka-shaped batch with `documents` and COPY it into staging from the executors: one Spark job."""
        stage = stage_partition(self.settings, self.schema, token, documents)
        totals: Counter = Counter()
        for row in batch.select(*KAFKA_COLUMNS).mapInArrow(stage, STAGED_COUNTS_SCHEMA).collect():
            totals[row["kind"]] += row["rows"]
        return dict(totals)

    def write(self, batch: DataFrame, batch_id: int, documents: Callable,
              on_index_actions: Callable[[list[IndexAction]], None] | None = None) -> MergeResult:
        """Render, stage and merge one micro-batch of Kafka rows (`documents`: transforms.documents_of)."""
        token = str(uuid.uuid4())
        started = time.monotonic()
        staged = self.stage(batch, token, documents)
        staged_at = time.monotonic()
        upserted, deleted, actions, dead_letters = {}, {}, [], 0
        if staged:
            params = {"token": token, "batch_id": batch_id, "kind": DEAD_LETTER, "stale_after": STALE_STAGE_AFTER}
            with self.connect() as connection, connection.cursor() as cursor:
                cursor.execute(self._winners, params)
                for entity, statements in self._entity_statements.items():
                    cursor.execute(statements["record_deletions"], {"entity": entity.name})
                actions = cursor.execute(self._index_actions).fetchall()
                if on_index_actions and actions:
                    on_index_actions(actions)
                for entity, statements in self._entity_statements.items():
                    cursor.execute(statements["delete_tombstoned"], {"entity": entity.name})
                    deleted[entity.name] = cursor.rowcount
                    cursor.execute(statements["upsert"], {"entity": entity.name})
                    upserted[entity.name] = cursor.rowcount
                cursor.execute(self._dead_letters, params)
                dead_letters = cursor.rowcount
                cursor.execute(self._clear, params)
            # Leaving the `with` block committed the transaction.
        return MergeResult(staged, upserted, deleted, dead_letters, len(actions),
                           round(staged_at - started, 3), round(time.monotonic() - staged_at, 3))
