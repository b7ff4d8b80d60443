"""Postgres sink: stage a micro-batch with one batched JDBC write from the executors, then merge it set-based.

Per batch: the batch's documents (transforms.to_documents / dead_letter_documents: every entity's newest-per-id
rows and the rejects, each as one JSON object) are appended to the UNLOGGED staging table under a fresh stage
token (stream_staging.sql). Then ONE transaction runs, per entity, the statements of stream_merge.sql: record
tombstones in deleted_records, delete tombstoned rows that are not newer, one INSERT ... SELECT ... ON CONFLICT
upsert guarded by the version column, and list the updates a recorded deletion suppressed (for the Elasticsearch
sink); then inserts the dead letters once per Kafka offset and clears the staged rows. No statement is per row.
Any failure raises: the transaction rolls back and the batch is replayed from the checkpoint.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass

import psycopg
from psycopg import sql
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from include.entities import ENTITIES, Entity
from include.schema import STREAM_STAGE_TABLE, quote_ident, render_sql_macro
from include.settings import Settings
from spark.transforms import DEAD_LETTER, DELETED, DOCUMENT, KIND

log = logging.getLogger(__name__)

MERGE_SQL = "stream_merge.sql"
STAGE_TOKEN = "stage_token"
# Staged rows older than this belong to an attempt that died before its merge; any merge sweeps them.
STALE_STAGE_AFTER = "1 hour"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def check_schema_name(schema: str) -> str:
    """A search_path value that needs no quoting in libpq/JDBC `options` (lower-case identifier)."""
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


@dataclass(frozen=True)
class MergeResult:
    upserted: dict[str, int]
    deleted: dict[str, int]
    suppressed: dict[str, list[str]]  # entity name -> ids whose update a recorded deletion suppressed
    dead_letters: int
    stage_seconds: float
    merge_seconds: float


def _merge_statements(entity: Entity) -> dict[str, str]:
    return {macro: render_sql_macro(MERGE_SQL, macro, entity=entity, stage=STREAM_STAGE_TABLE)
            for macro in ("record_deletions", "delete_tombstoned", "upsert", "suppressed_ids")}


class PostgresSink:
    def __init__(self, settings: Settings, schema: str | None = None, jdbc_batch_size: int = 5000,
                 jdbc_max_connections: int = 4):
        self.settings = settings
        self.schema = check_schema_name(schema) if schema else None
        self.jdbc_batch_size = jdbc_batch_size
        self.jdbc_max_connections = jdbc_max_connections
        self._entity_statements = {entity: _merge_statements(entity) for entity in ENTITIES}
        self._dead_letters_statement = render_sql_macro(MERGE_SQL, "insert_dead_letters", stage=STREAM_STAGE_TABLE)
        self._clear_statement = render_sql_macro(MERGE_SQL, "clear_stage", stage=STREAM_STAGE_TABLE)

    def connect(self, **kwargs) -> psycopg.Connection:
        return connect(self.settings, self.schema, **kwargs)

    def jdbc_options(self) -> dict[str, str]:
        s = self.settings
        options = f"-c statement_timeout={s.pg_statement_timeout_ms}"
        if self.schema:
            options += f" -c search_path={self.schema}"
        return {
            "url": f"jdbc:postgresql://{s.pg_host}:{s.pg_port}/{s.pg_warehouse_db}",
            "driver": "org.postgresql.Driver",
            "user": s.pg_user,
            "password": s.pg_password,
            "options": options,
            # Strings go out untyped so PostgreSQL casts them to the column's type (uuid, jsonb).
            "stringtype": "unspecified",
            "reWriteBatchedInserts": "true",
            "batchsize": str(self.jdbc_batch_size),
            "numPartitions": str(self.jdbc_max_connections),
        }

    def write(self, documents: DataFrame) -> MergeResult:
        """Stage and merge one micro-batch's documents (columns of transforms.DOCUMENT_COLUMNS)."""
        token = str(uuid.uuid4())
        started = time.monotonic()
        (documents.select(F.lit(token).alias(STAGE_TOKEN), KIND, DELETED, DOCUMENT)
         .write.format("jdbc").options(**self.jdbc_options()).option("dbtable", quote_ident(STREAM_STAGE_TABLE))
         .mode("append").save())
        staged = time.monotonic()

        upserted, deleted, suppressed = {}, {}, {}
        with self.connect() as connection, connection.cursor() as cursor:
            for entity, statements in self._entity_statements.items():
                params = {"token": token, "entity": entity.name}
                cursor.execute(statements["record_deletions"], params)
                cursor.execute(statements["delete_tombstoned"], params)
                deleted[entity.name] = cursor.rowcount
                cursor.execute(statements["upsert"], params)
                upserted[entity.name] = cursor.rowcount
                cursor.execute(statements["suppressed_ids"], params)
                ids = [row[0] for row in cursor.fetchall()]
                if ids:
                    suppressed[entity.name] = ids
            cursor.execute(self._dead_letters_statement, {"token": token, "kind": DEAD_LETTER})
            dead_letters = cursor.rowcount
            cursor.execute(self._clear_statement, {"token": token, "stale_after": STALE_STAGE_AFTER})
        # Leaving the `with` block committed the transaction.
        return MergeResult(upserted, deleted, suppressed, dead_letters,
                           round(staged - started, 3), round(time.monotonic() - staged, 3))
