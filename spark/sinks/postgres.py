"""Postgres sink: COPY a micro-batch into staging from the executors, then merge it set-based in one transaction.

Per batch: every task renders its Kafka rows as documents (spark/transforms.py: valid rows and rejects, each one
JSON object, with its Kafka position) and COPYs them into the UNLOGGED staging table under the batch's stage
token, in its own transaction (stream_staging.sql). Then ONE transaction runs stream_merge.sql: pick the newest
staged row per id (the winners, with their Kafka position), then, after a savepoint, per entity record tombstones
in deleted_records, delete tombstoned rows that are not newer and upsert guarded by the entity's order (its version
column, or its source position: include/entities.py); then insert the dead letters once per Kafka offset, move the
offset ledger and clear the staged rows. No statement is per row.

Staging is UNLOGGED, so Postgres's crash recovery empties it: a crash between the stage and the merge would leave
the merge nothing, and committing that would mark the batch done with none of its records. The merge therefore
first counts what staging holds of the batch (distinct Kafka records per kind) and raises StagingLost unless it is
exactly what the tasks reported; the batch fails before anything commits and is replayed from the checkpoint.

The offset ledger (stream_offsets: the last offset merged per topic partition, with its batch id and the topic's
id) is moved in the same transaction. A batch newer than the ledger's that does not start right after its last
offset records the offsets it never read in lost_offsets: 'skipped' when the broker no longer held them (the job
runs with failOnDataLoss=false, so retention cannot stop it). A batch read from a topic whose id is not the
ledger's (the topic was deleted and recreated), or newer and starting below the last offset, records a 'reset'.
The topic id is looked up before and after the stage: a batch during which it changed fails (TopicRecreated) and is
replayed, so every batch merged belongs to one topic.

Refused by one sink = refused by both. A row Postgres refuses for its data (SQLSTATE class 22 or 23, or 54000: a
CHECK, a value jsonb_populate_record cannot cast, an index row too large) fails a set-based statement; the
statement is then bisected over ranges of winners under savepoints until the refused rows are single ones (about
2 log2(n) statements per refused row, never one per row of the batch). The refused rows are marked, the merge rolls
back to its savepoint and runs again without them. Only then are the index actions streamed, through a
server-side cursor, to `index` (the Elasticsearch bulk, spark/sinks/elastic.py), which returns the documents
Elasticsearch refused for their data; if there are any, they are marked too and the merge is redone once more
without them before the commit. A refused row thus keeps its previous version in both sinks and becomes a dead
letter `sink_refused: <sink>: <reason>` with the Kafka position of the winning record. The price is the overlap
the bulk used to have with the upsert: the bulk now runs after it (and before the commit, so a failed bulk rolls
Postgres back as well). Any other failure (connection, timeout, serialization, a missing table, 429/5xx after
retries) raises: the transaction rolls back and the batch is replayed from the checkpoint.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import psycopg
from pyspark.sql import DataFrame

from include.connections import check_schema_name, warehouse_session
from include.entities import ENTITIES, Entity
from include.schema import STREAM_STAGE_TABLE, quote_ident, render_sql_macro
from include.settings import Settings
from spark.transforms import (DEAD_LETTER, DELETED, DOCUMENT, DOCUMENT_ID, DOCUMENT_POSITION, DOCUMENT_VERSION,
                              KAFKA_COLUMNS, KIND)

log = logging.getLogger(__name__)

MERGE_SQL = "stream_merge.sql"
WINNERS_TABLE = "stream_winners"  # temporary, dropped at commit
BATCH_OFFSETS_TABLE = "stream_batch_offsets"  # temporary, dropped at commit
# Staged rows older than this belong to an attempt that died before its merge; any merge sweeps them.
STALE_STAGE_AFTER = "1 hour"
# Document columns -> staging columns, in COPY order (after stage_token).
STAGED_COLUMNS = {KIND: "kind", DOCUMENT_ID: "id", DOCUMENT_VERSION: "version", DOCUMENT_POSITION: "position",
                  DELETED: "deleted", "timestamp": "kafka_timestamp", "topic": "kafka_topic",
                  "partition": "kafka_partition", "offset": "kafka_offset", DOCUMENT: "doc"}
STAGED_COUNTS_SCHEMA = "kind string, rows long"

# (kind, id, external version (include/sql/sink_order.sql), deleted, doc): a row Elasticsearch must get.
IndexAction = tuple[str, str, int, bool, str]
# (kind, id, reason): a document another sink refused for its data.
Refusal = tuple[str, str, str]
# Index actions fetched per round trip of the server-side cursor: with documents of at most the payload limit
# (256 KB by default) the driver holds at most about 25 MB of them at a time.
INDEX_ACTIONS_PER_FETCH = 100
# SQLSTATEs of a row refused for its data: classes 22 (data exception) and 23 (integrity constraint violation),
# and 54000 (program_limit_exceeded, e.g. an index row too large). Anything else is the batch's failure.
REFUSED_SQLSTATE_CLASSES = ("22", "23")
REFUSED_SQLSTATES = ("54000",)
REASON_CHARS = 500


def refused_for_data(error: psycopg.Error) -> bool:
    state = error.sqlstate or ""
    return state[:2] in REFUSED_SQLSTATE_CLASSES or state in REFUSED_SQLSTATES


def refusal_reason(sink: str, detail: str) -> str:
    """The dead-letter reason of a row a sink refused: `sink_refused: <sink>: <detail>`, first line, bounded."""
    first_line = detail.strip().splitlines()[0] if detail.strip() else "no detail"
    return f"sink_refused: {sink}: {first_line}"[:REASON_CHARS]


def copy_statement() -> str:
    columns = ", ".join(quote_ident(c) for c in ("stage_token", "task_partition", *STAGED_COLUMNS.values()))
    return f"COPY {quote_ident(STREAM_STAGE_TABLE)} ({columns}) FROM STDIN"


def stage_partition(settings: Settings, schema: str | None, token: str, documents: Callable) -> Callable:
    """The mapInArrow function of one task: render its Kafka rows with `documents` (transforms.documents_of), COPY
    them under `token` and its partition number, yield its row count per kind.

    A retried task (its executor lost, say) reads the same Kafka offsets again. The earlier attempt may have
    committed its COPY before it died, so every attempt first deletes the rows its partition staged under the token. The
    transaction-scoped advisory lock on (token, partition) orders the attempts: a retry waits for an earlier attempt
    still running (a Python worker whose JVM died can still commit) and then deletes what that one committed."""
    statement = copy_statement()
    stage_table = quote_ident(STREAM_STAGE_TABLE)

    def stage(batches):
        import pyarrow as pa
        from pyspark import TaskContext

        task = TaskContext.get()
        partition = task.partitionId()
        counts: Counter = Counter()
        with warehouse_session(settings, schema) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s), %s)", (token, partition))
            # Every attempt, not only those numbered above 0: a new stage attempt numbers its tasks from 0 again.
            cursor.execute(f"DELETE FROM {stage_table} WHERE stage_token = %s AND task_partition = %s",
                           (token, partition))
            if cursor.rowcount:
                log.warning("task attempt %s of partition %s: deleted %s rows an earlier attempt staged",
                            task.attemptNumber(), partition, cursor.rowcount)
            for batch in batches:
                # One COPY per Arrow batch (at most spark.sql.execution.arrow.maxBytesPerBatch), so no statement
                # outlives the statement timeout however large the task's share; one transaction still.
                rendered = documents(batch)
                columns = [rendered.column(name).to_pylist() for name in STAGED_COLUMNS]
                with cursor.copy(statement) as copy:
                    for row in zip(*columns):
                        copy.write_row((token, partition, *row))
                counts.update(columns[0])
        # Leaving the `with` block committed this task's rows.
        yield pa.RecordBatch.from_pydict({"kind": list(counts), "rows": list(counts.values())})

    return stage


class TopicRecreated(RuntimeError):
    """The topic's id changed while the batch was staged: which topic its records came from is unknown, so it is
    replayed."""


class StagingLost(RuntimeError):
    """Staging does not hold what the tasks reported staging for the batch (Postgres crash recovery truncated the
    UNLOGGED table): the merge commits nothing and the batch is replayed."""


@dataclass(frozen=True)
class MergeResult:
    staged: dict[str, int]  # kind -> rows, dead letters included
    upserted: dict[str, int]
    deleted: dict[str, int]
    dead_letters: int  # rejects and refused rows
    refused: dict[str, int]  # sink -> rows it refused
    index_actions: int
    lost_offset_ranges: int  # offset ranges this batch found it never read (lost_offsets)
    stage_seconds: float
    merge_seconds: float


@dataclass
class _Pass:
    """One run of the entity statements after the savepoint."""
    upserted: dict[str, int]
    deleted: dict[str, int]
    refused: list[tuple[int, str]]  # (winner number, reason): rows Postgres refused in this pass


def _entity_statements(entity: Entity) -> dict[str, str]:
    return {macro: render_sql_macro(MERGE_SQL, macro, entity=entity, winners=WINNERS_TABLE)
            for macro in ("record_deletions", "delete_tombstoned", "upsert")}


class PostgresSink:
    def __init__(self, settings: Settings, schema: str | None = None):
        self.settings = settings
        self.schema = check_schema_name(schema) if schema else None
        self._winners = render_sql_macro(MERGE_SQL, "winners", stage=STREAM_STAGE_TABLE, winners=WINNERS_TABLE)
        self._entity_statements = {entity: _entity_statements(entity) for entity in ENTITIES}
        self._refuse_row = render_sql_macro(MERGE_SQL, "refuse_row", winners=WINNERS_TABLE)
        self._refuse_documents = render_sql_macro(MERGE_SQL, "refuse_documents", winners=WINNERS_TABLE)
        self._index_actions = render_sql_macro(MERGE_SQL, "index_actions", winners=WINNERS_TABLE)
        self._dead_letters = render_sql_macro(MERGE_SQL, "insert_dead_letters", stage=STREAM_STAGE_TABLE)
        self._refused_dead_letters = render_sql_macro(MERGE_SQL, "insert_refused_dead_letters",
                                                      winners=WINNERS_TABLE)
        self._clear = render_sql_macro(MERGE_SQL, "clear_stage", stage=STREAM_STAGE_TABLE)
        self._staged_offsets = render_sql_macro(MERGE_SQL, "staged_offsets", stage=STREAM_STAGE_TABLE)
        self._ledger = [render_sql_macro(MERGE_SQL, "batch_offsets", stage=STREAM_STAGE_TABLE,
                                         offsets=BATCH_OFFSETS_TABLE)] + [
            render_sql_macro(MERGE_SQL, macro, offsets=BATCH_OFFSETS_TABLE)
            for macro in ("record_lost_offsets", "advance_offsets")]

    def connect(self, **kwargs) -> psycopg.Connection:
        return warehouse_session(self.settings, self.schema, **kwargs)

    def stage(self, batch: DataFrame, token: str, documents: Callable) -> dict[str, int]:
        """Render a Kafka-shaped batch with `documents` and COPY it into staging from the executors: one Spark job."""
        stage = stage_partition(self.settings, self.schema, token, documents)
        totals: Counter = Counter()
        for row in batch.select(*KAFKA_COLUMNS).mapInArrow(stage, STAGED_COUNTS_SCHEMA).collect():
            totals[row["kind"]] += row["rows"]
        return dict(totals)

    def write(self, batch: DataFrame, batch_id: int, documents: Callable,
              index: Callable[[Iterator[IndexAction]], Sequence[Refusal]] | None = None,
              topic_id: Callable[[], str] | None = None) -> MergeResult:
        """Render, stage and merge one micro-batch of Kafka rows (`documents`: transforms.documents_of); `index`
        gets the rows Postgres took, before the commit, and returns those it refused; `topic_id` looks up the id of
        the topic the batch is read from (spark/sinks/topic.py; None: the ledger does not compare topic ids)."""
        token = str(uuid.uuid4())
        started = time.monotonic()
        topic_before = topic_id() if topic_id else None
        staged = self.stage(batch, token, documents)
        topic_after = topic_id() if topic_id else None
        if topic_before != topic_after:
            raise TopicRecreated(f"the topic's id changed from {topic_before} to {topic_after} while batch {batch_id} "
                                 "was staged; it will be replayed")
        staged_at = time.monotonic()
        merged = None
        if staged:
            params = {"token": token, "batch_id": batch_id, "kind": DEAD_LETTER, "stale_after": STALE_STAGE_AFTER,
                      "topic_id": topic_after}
            with self.connect() as connection:
                merged = self.merge(connection, params, staged, index)
            # Leaving the `with` block committed the transaction.
        upserted, deleted, dead_letters, refused, actions, lost = merged or ({}, {}, 0, {}, 0, 0)
        return MergeResult(staged, upserted, deleted, dead_letters, refused, actions, lost,
                           round(staged_at - started, 3), round(time.monotonic() - staged_at, 3))

    def merge(self, connection: psycopg.Connection, params: dict, staged: dict[str, int],
              index: Callable[[Iterator[IndexAction]], Sequence[Refusal]] | None):
        """The merge transaction of one staged batch (see the module docstring), `staged` being what its tasks
        reported: upserted, deleted, dead letters, refused per sink, index actions, lost offset ranges."""
        with connection.cursor() as cursor:
            found = dict(cursor.execute(self._staged_offsets, params).fetchall())
            if found != staged:
                raise StagingLost(f"staging holds {found} of batch {params['batch_id']} but its tasks staged "
                                  f"{staged} (Postgres restarted and emptied the UNLOGGED staging table?); "
                                  "nothing is committed, the batch will be replayed")
            winners = cursor.execute(self._winners, params).rowcount
            cursor.execute("SAVEPOINT merge")
            merged = self._apply(cursor, winners)
            refused_by_postgres = 0
            while merged.refused:  # each pass refuses at least one more row, so this ends
                refused_by_postgres += len(merged.refused)
                self._restart(cursor, [(self._refuse_row, {"n": n, "reason": reason}) for n, reason in merged.refused])
                merged = self._apply(cursor, winners)
            actions, refused_by_elasticsearch = 0, []
            if index:
                actions, refused_by_elasticsearch = self._index(connection, index)
            if refused_by_elasticsearch:
                kinds, ids, reasons = (list(column) for column in zip(*refused_by_elasticsearch))
                self._restart(cursor, [(self._refuse_documents, {"kinds": kinds, "ids": ids, "reasons": reasons})])
                merged = self._apply(cursor, winners)
                if merged.refused:
                    # Elasticsearch already holds these rows: the batch fails and is replayed rather than split.
                    raise RuntimeError(f"the merge refused other rows when redone: {merged.refused[:3]}")
            cursor.execute(self._dead_letters, params)
            dead_letters = cursor.rowcount
            cursor.execute(self._refused_dead_letters, params)
            dead_letters += cursor.rowcount
            batch_offsets, record_lost, advance = self._ledger
            cursor.execute(batch_offsets, params)
            lost = cursor.execute(record_lost, params).rowcount
            if lost:
                log.warning("batch %s: %s Kafka offset ranges were never read (lost_offsets)", params["batch_id"], lost)
            cursor.execute(advance, params)
            cursor.execute(self._clear, params)
        refused = {"postgres": refused_by_postgres, "elasticsearch": len(refused_by_elasticsearch)}
        return merged.upserted, merged.deleted, dead_letters, refused, actions, lost

    def _restart(self, cursor, refusals: list[tuple[str, dict]]) -> None:
        """Undo the entity statements, mark refused winners outside the savepoint, and set it again."""
        cursor.execute("ROLLBACK TO SAVEPOINT merge")
        cursor.execute("RELEASE SAVEPOINT merge")
        for statement, params in refusals:
            cursor.execute(statement, params)
        cursor.execute("SAVEPOINT merge")

    def _apply(self, cursor, winners: int) -> _Pass:
        merged = _Pass({}, {}, [])
        for entity, statements in self._entity_statements.items():
            params = {"entity": entity.name}
            self._isolating(cursor, statements["record_deletions"], params, 1, winners, merged.refused)
            merged.deleted[entity.name] = self._isolating(
                cursor, statements["delete_tombstoned"], params, 1, winners, merged.refused)
            merged.upserted[entity.name] = self._isolating(
                cursor, statements["upsert"], params, 1, winners, merged.refused)
        return merged

    def _isolating(self, cursor, statement: str, params: dict, lo: int, hi: int,
                   refused: list[tuple[int, str]]) -> int:
        """Run `statement` on winners lo..hi; when Postgres refuses a row of them for its data, bisect the range
        under savepoints and add each refused winner to `refused`. Returns the rows the statement changed."""
        if lo > hi:
            return 0
        cursor.execute("SAVEPOINT isolate")
        try:
            cursor.execute(statement, {**params, "lo": lo, "hi": hi})
        except psycopg.Error as error:
            if not refused_for_data(error):
                raise
            cursor.execute("ROLLBACK TO SAVEPOINT isolate")
            cursor.execute("RELEASE SAVEPOINT isolate")
            if lo == hi:
                refused.append((lo, refusal_reason("postgres", f"{error.sqlstate} {error}")))
                return 0
            middle = (lo + hi) // 2
            return (self._isolating(cursor, statement, params, lo, middle, refused)
                    + self._isolating(cursor, statement, params, middle + 1, hi, refused))
        changed = cursor.rowcount
        cursor.execute("RELEASE SAVEPOINT isolate")
        return changed

    def _index(self, connection: psycopg.Connection,
               index: Callable[[Iterator[IndexAction]], Sequence[Refusal]]) -> tuple[int, list[Refusal]]:
        """Stream the index actions to `index` through a server-side cursor (the driver never holds them all)."""
        counted = 0
        with connection.cursor(name="index_actions") as actions:
            actions.itersize = INDEX_ACTIONS_PER_FETCH
            actions.execute(self._index_actions)

            def each_action() -> Iterator[IndexAction]:
                nonlocal counted
                for row in actions:
                    counted += 1
                    yield row

            refused = list(index(each_action()))
        return counted, refused
