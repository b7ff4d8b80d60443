"""Postgres sink: stage a micro-batch with batched JDBC from the executors, then merge it set-based.

Per batch: each entity's newest-per-id rows and the rejects are appended to UNLOGGED staging tables under a fresh
stage token (stream_staging.sql); then ONE transaction runs, per entity, the statements of stream_merge.sql:
record tombstones in deleted_records, delete tombstoned rows that are not newer, one INSERT ... SELECT ... ON
CONFLICT upsert guarded by the version column, and lists updates a recorded deletion suppressed (for the
Elasticsearch sink). Dead letters are inserted once per Kafka offset. No statement is per row. Any failure
raises: the transaction rolls back and the batch is replayed from the checkpoint.
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

from include.entities import Entity
from include.schema import quote_ident, render_sql_macro, stage_table
from include.settings import Settings

log = logging.getLogger(__name__)

MERGE_SQL = "stream_merge.sql"
DEAD_LETTERS = "dead_letters"
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


class PostgresSink:
    def __init__(self, settings: Settings, schema: str | None = None, jdbc_batch_size: int = 5000,
                 jdbc_max_connections: int = 4):
        self.settings = settings
        self.schema = check_schema_name(schema) if schema else None
        self.jdbc_batch_size = jdbc_batch_size
        self.jdbc_max_connections = jdbc_max_connections

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
            # Strings go out untyped so PostgreSQL casts them to the column's uuid/jsonb type.
            "stringtype": "unspecified",
            "reWriteBatchedInserts": "true",
            "batchsize": str(self.jdbc_batch_size),
            "numPartitions": str(self.jdbc_max_connections),
        }

    def _stage(self, frame: DataFrame, table: str, token: str) -> None:
        (frame.withColumn(STAGE_TOKEN, F.lit(token))
         .write.format("jdbc").options(**self.jdbc_options()).option("dbtable", quote_ident(table))
         .mode("append").save())

    def write(self, frames: dict[Entity, DataFrame], dead_letters: DataFrame | None) -> MergeResult:
        """Stage and merge one micro-batch: `frames` hold newest-per-id rows (entity columns + deleted),
        `dead_letters` rows shaped by transforms.to_dead_letters. Empty inputs should be left out."""
        token = str(uuid.uuid4())
        started = time.monotonic()
        for entity, frame in frames.items():
            self._stage(frame, stage_table(entity.table), token)
        if dead_letters is not None:
            self._stage(dead_letters, stage_table(DEAD_LETTERS), token)

        staged = time.monotonic()
        upserted, deleted, suppressed = {}, {}, {}
        dead_count = 0
        stages = [stage_table(e.table) for e in frames]
        if dead_letters is not None:
            stages.append(stage_table(DEAD_LETTERS))
        with self.connect() as connection, connection.cursor() as cursor:
            for entity in frames:
                params = {"token": token, "entity": entity.name}
                stage = stage_table(entity.table)
                cursor.execute(self._statement("record_deletions", entity, stage), params)
                cursor.execute(self._statement("delete_tombstoned", entity, stage), params)
                deleted[entity.name] = cursor.rowcount
                cursor.execute(self._statement("upsert", entity, stage), params)
                upserted[entity.name] = cursor.rowcount
                cursor.execute(self._statement("suppressed_ids", entity, stage), params)
                suppressed[entity.name] = [row[0] for row in cursor.fetchall()]
            if dead_letters is not None:
                cursor.execute(render_sql_macro(MERGE_SQL, "insert_dead_letters", stage=stage_table(DEAD_LETTERS)),
                               {"token": token})
                dead_count = cursor.rowcount
            for stage in stages:
                cursor.execute(render_sql_macro(MERGE_SQL, "clear_stage", stage=stage),
                               {"token": token, "stale_after": STALE_STAGE_AFTER})
        # Leaving the `with` block committed the transaction.
        return MergeResult(upserted, deleted, {k: v for k, v in suppressed.items() if v}, dead_count,
                           round(staged - started, 3), round(time.monotonic() - staged, 3))

    @staticmethod
    def _statement(macro: str, entity: Entity, stage: str) -> str:
        return render_sql_macro(MERGE_SQL, macro, entity=entity, stage=stage)
