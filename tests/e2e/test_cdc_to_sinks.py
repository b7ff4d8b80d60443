"""The cdc extraction end to end: the Supabase stand-in's WAL (include/extract/cdc.py) -> Kafka -> the streaming job
-> Postgres and Elasticsearch, under concurrent source writes.

Each test owns a uuid-named source schema, replication slot and publication (dropped afterwards: a slot left
behind keeps WAL for ever), topic, warehouse schema, index prefix and checkpoint. The job's query (build_query, a
processing-time trigger) runs in the tests' SparkSession while the extraction runs, as in production, sparing a JVM
start; `processAllAvailable` then waits until it has merged everything on the topic. Each test ends with
`assert_sinks_equal_source`: the reconciler finds no drift (ids and versions: Postgres against the source,
Elasticsearch against Postgres), and every field of every row is the same in the source, Postgres and
Elasticsearch.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from elasticsearch import helpers

from include.connections import pg_session
from include.entities import LEAD
from include.extract.config import ExtractConfig
from include.extract.service import run_cdc
from include.reconcile.service import reconcile_entity
from include.schema import quote_ident
from include.settings import REPO_ROOT
from spark.streaming_job import build_query, parse_args
from tests.integration.test_cdc_extract import cdc, latest, source_names

MAX_BYTES = 64 * 1024
OFFSETS_PER_BATCH = 20_000


@pytest.fixture
def stream(spark, settings, kafka_topic, pg_schema, es_prefix, tmp_state):
    """The streaming job's query on the test's topic, warehouse schema and indices, running until the test ends."""
    config = parse_args([
        "--checkpoint-root", str(tmp_state / "checkpoints"), "--query-name", "cdc_to_sinks", "--topic", kafka_topic,
        "--pg-schema", pg_schema, "--es-index-prefix", es_prefix, "--trigger", "processing-time=1 second",
        "--max-offsets-per-trigger", str(OFFSETS_PER_BATCH), "--max-payload-bytes", str(MAX_BYTES),
        # Narrow rows: a batch's bytes stay far below its offsets times the payload limit.
        "--max-bytes-per-trigger", str(OFFSETS_PER_BATCH * MAX_BYTES)])
    query = build_query(spark, config, settings)
    yield query
    if query.isActive:
        query.stop()


def seed(source_db, schema: str, rows: int) -> None:
    """`rows` leads with a value in every column type the lead has; `score_qualificacao` numbers them (indexed,
    for the writers' single-row updates)."""
    leads = f"{quote_ident(schema)}.leads"
    source_db.execute(f"""INSERT INTO {leads} (nome, email, localizacao, interesse, score_qualificacao, status_lead,
                              created_at, last_interaction_at)
        SELECT 'seed ' || n, 'lead' || n || '@example.com', jsonb_build_object('n', n, 'cidade', 'São Paulo'),
               ARRAY['imóveis', 'lote ' || mod(n, 7)], n, 'novo', now() - n * interval '1 minute', NULL
        FROM generate_series(1, %s) n""", [rows])
    source_db.execute(f"CREATE INDEX ON {leads} (score_qualificacao)")
    source_db.commit()


def _lead_columns() -> str:
    return ", ".join(f"{quote_ident(name)}::text" if name == LEAD.key else quote_ident(name)
                     for name in LEAD.field_names)


def table_rows(connection, schema: str, table: str) -> dict[str, tuple]:
    """id -> every registry field of the lead, as psycopg loads it."""
    rows = connection.execute(f"SELECT {_lead_columns()} FROM {quote_ident(schema)}.{quote_ident(table)}").fetchall()
    connection.commit()
    return {row[0]: row for row in rows}


def _from_document(field, value):
    if value is not None and field.type == "timestamptz":
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


def document_rows(es, index: str) -> dict[str, tuple]:
    """_id -> every registry field of the document's _source, timestamps parsed."""
    es.indices.refresh(index=index)
    return {hit["_id"]: tuple(_from_document(field, hit["_source"].get(field.name)) for field in LEAD.fields)
            for hit in helpers.scan(es, index=index, query={"query": {"match_all": {}}})}


def assert_sinks_equal_source(settings, es, source_db, source_schema: str, pg_schema: str, es_prefix: str) -> int:
    """The sinks hold exactly the source's leads: ids and versions (the reconciler), then every value. Returns
    the number of leads."""
    with pg_session(settings, settings.pg_warehouse_db) as warehouse:
        drifts = reconcile_entity(LEAD, warehouse=warehouse, es=es, source=source_db, warehouse_schema=pg_schema,
                                  source_schema=source_schema, index_prefix=es_prefix)
        assert {d.store: d.total for d in drifts} == {"postgres": 0, "elasticsearch": 0}, [
            d.as_dict() for d in drifts]
        warehouse_rows = table_rows(warehouse, pg_schema, LEAD.table)
        assert warehouse.execute(f"SELECT count(*) FROM {quote_ident(pg_schema)}.dead_letters").fetchone()[0] == 0
    source_rows = table_rows(source_db, source_schema, LEAD.source_table)
    unequal = [key for key in source_rows if warehouse_rows.get(key) != source_rows[key]]
    assert not unequal and len(warehouse_rows) == len(source_rows), (
        f"{len(unequal)} leads differ in Postgres, e.g. "
        f"{[(source_rows[k], warehouse_rows.get(k)) for k in unequal[:2]]}")
    documents = document_rows(es, LEAD.index_name(es_prefix))
    unequal = [key for key in warehouse_rows if documents.get(key) != warehouse_rows[key]]
    assert not unequal and len(documents) == len(warehouse_rows), (
        f"{len(unequal)} documents differ from Postgres, e.g. "
        f"{[(warehouse_rows[k], documents.get(k)) for k in unequal[:2]]}")
    return len(source_rows)


class Writer(threading.Thread):
    """Commits small transactions of inserts, updates (each to a value never used before) and deletes, and
    records what each committed transaction left."""

    def __init__(self, settings, schema: str, seed: int):
        super().__init__(daemon=True)
        self.settings, self.leads = settings, f"{quote_ident(schema)}.leads"
        self.random, self.stop, self.transactions, self.error = random.Random(seed), threading.Event(), 0, None
        self.committed: list[tuple[str, str | None]] = []  # (id, nome) for every upsert; (id, None) for a delete

    def run(self):
        try:
            with pg_session(self.settings, self.settings.pg_source_db) as connection:
                counter = 0
                while not self.stop.is_set():
                    ids = [r[0] for r in connection.execute(
                        f"SELECT id::text FROM {self.leads} ORDER BY random() LIMIT 6").fetchall()]
                    changes = []
                    for _ in range(3):
                        counter += 1
                        name = f"w{counter}"
                        changes.append((connection.execute(
                            f"INSERT INTO {self.leads} (nome, interesse) VALUES (%s, ARRAY[%s]) RETURNING id::text",
                            [name, name]).fetchone()[0], name))
                    for record_id in ids[:4]:
                        counter += 1
                        connection.execute(f"UPDATE {self.leads} SET nome = %s, localizacao = jsonb_build_object("
                                           "'w', %s::int) WHERE id = %s", [f"w{counter}", counter, record_id])
                        changes.append((record_id, f"w{counter}"))
                    for record_id in ids[4:5]:
                        connection.execute(f"DELETE FROM {self.leads} WHERE id = %s", [record_id])
                        changes.append((record_id, None))
                    connection.commit()
                    self.committed += changes
                    self.transactions += 1
                    time.sleep(self.random.uniform(0, 0.01))
        except BaseException as error:  # re-raised by the test's join_checked()
            self.error = error

    def join_checked(self):
        self.stop.set()
        self.join(timeout=30)
        if self.error:
            raise self.error


def test_extraction_killed_three_times_mid_run_under_concurrent_writes_ends_with_sinks_equal_to_the_source(
        settings, es, cdc_settings, source_db, source_schema, pg_schema, es_prefix, endpoints, warehouse_db,
        kafka_topic, read_topic, stream):
    """The extraction SIGKILLed three times (the first time mid-snapshot) while inserts, updates and deletes commit
    and the job consumes what it published; after one more run every committed change is on the topic, the newest
    message per key equals the source, and Postgres and Elasticsearch equal the source."""
    leads = f"{quote_ident(source_schema)}.leads"
    seed(source_db, source_schema, 20_000)
    source_db.autocommit = True
    command = [sys.executable, "-m", "include.extract", "run", "--page-size", "200", "--source-schema",
               source_schema, "--warehouse-schema", pg_schema, "--topic", kafka_topic]
    environment = os.environ | {"PIPELINE_EXTRACT_SOURCE": "cdc", "PIPELINE_EXTRACT_CDC_SLOT": source_schema,
                                "PIPELINE_EXTRACT_CDC_PUBLICATION": source_schema}
    # Changes committed before the slot exists reach Kafka as the snapshot's rows, not one by one: the writer
    # starts once the first run created the slot.
    writer = Writer(settings, source_schema, seed=7)
    kills = attempt = 0
    try:
        while kills < 3 and attempt < 8:
            attempt += 1
            # A backlog for the run to be in the middle of: the writer's transactions since the last run, and
            # 3,000 one-row transactions more.
            source_db.execute(f"""DO $$ BEGIN FOR n IN 1..3000 LOOP
                UPDATE {leads} SET nome = 'bulk{attempt}-' || n WHERE score_qualificacao = n; COMMIT;
                END LOOP; END $$""")
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE)
            try:
                before = warehouse_db.execute("SELECT confirmed_at FROM extract_cdc_slots").fetchone()
                deadline = time.monotonic() + 60
                # Killed once it has confirmed a position (the first time: once the snapshot is under way), with
                # pages sent and not yet acknowledged.
                while process.poll() is None and time.monotonic() < deadline:
                    if not writer.is_alive() and warehouse_db.execute("SELECT 1 FROM extract_cdc_slots").fetchone():
                        writer.start()
                    now = warehouse_db.execute(
                        "SELECT confirmed_at, snapshot_progress::text FROM extract_cdc_slots").fetchone()
                    if now and (now[0] != (before and before[0]) or (attempt == 1 and now[1] != "{}")):
                        break
                    time.sleep(0.01)
                time.sleep(random.uniform(0, 0.1))
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            # A run that finished before the signal is no kill; the next attempt brings a new backlog.
            assert process.returncode in (0, -signal.SIGKILL), process.stderr.read().decode()[-2000:]
            kills += process.returncode == -signal.SIGKILL
    finally:
        if writer.is_alive():
            writer.join_checked()

    cdc(cdc_settings, endpoints)
    stream.processAllAvailable()

    assert kills == 3 and writer.transactions > 50
    on_kafka = {(r.key, None if r.value.get("deleted") else r.value["nome"]) for r in read_topic(kafka_topic)}
    missing = [change for change in writer.committed if change not in on_kafka]
    assert not missing, f"{len(missing)} committed changes never reached Kafka, e.g. {missing[:5]}"
    newest = latest(read_topic, kafka_topic)
    alive = {key: value["nome"] for key, value in newest.items() if not value.get("deleted")}
    assert alive == source_names(source_db, source_schema)
    deleted = {change[0] for change in writer.committed if change[1] is None}
    assert deleted and not deleted & set(alive)
    assert_sinks_equal_source(settings, es, source_db, source_schema, pg_schema, es_prefix)


class Updater(threading.Thread):
    """`count` single-row updates (autocommit) of random leads numbered 1..`rows`, started once the first run has
    created its slot; counts those committed while the initial snapshot was still being copied."""

    def __init__(self, settings, source_schema: str, pg_schema: str, rows: int, count: int):
        super().__init__(daemon=True)
        self.settings, self.source_schema, self.pg_schema = settings, source_schema, pg_schema
        self.rows, self.count = rows, count
        self.done = self.during_copy = 0
        self.error: BaseException | None = None

    def run(self):
        leads = f"{quote_ident(self.source_schema)}.leads"
        rng = random.Random(3)
        try:
            with pg_session(self.settings, self.settings.pg_source_db, autocommit=True) as source, \
                    pg_session(self.settings, self.settings.pg_warehouse_db, self.pg_schema,
                               autocommit=True) as warehouse:
                def copying() -> bool | None:
                    """None: no slot yet; else whether its snapshot is still being copied."""
                    row = warehouse.execute("SELECT snapshot_done FROM extract_cdc_slots").fetchone()
                    return None if row is None else not row[0]

                # Each update is its own transaction, committed without waiting for the WAL flush: more of them meet
                # the copy, and the slot decodes them all the same.
                source.execute("SET synchronous_commit = off")
                deadline = time.monotonic() + 120
                while copying() is None:
                    if time.monotonic() > deadline:
                        raise AssertionError("the first run created no slot within 120 s")
                    time.sleep(0.01)
                in_copy = True
                while self.done < self.count:
                    n = rng.randint(1, self.rows)
                    source.execute(f"UPDATE {leads} SET nome = %s, localizacao = localizacao || jsonb_build_object("
                                   "'u', %s::int) WHERE score_qualificacao = %s", [f"seed {n} u{self.done}",
                                                                                   self.done, n])
                    self.done += 1
                    if in_copy and self.done % 100 == 0:
                        in_copy = copying()
                    self.during_copy += in_copy
        except BaseException as error:  # re-raised by the test
            self.error = error


def test_an_initial_snapshot_of_100000_rows_under_10000_concurrent_updates_ends_with_sinks_equal_to_the_source(
        settings, es, cdc_settings, source_db, source_schema, pg_schema, es_prefix, endpoints, stream):
    """The slot's exported snapshot and the stream after it meet without a gap or a regression: rows updated while
    the first run copies them (before or after their page) end, in Postgres and Elasticsearch, equal to the
    source."""
    rows, count = 100_000, 10_000
    seed(source_db, source_schema, rows)
    updater = Updater(settings, source_schema, pg_schema, rows, count)
    updater.start()
    started = time.monotonic()
    # Pages of 1,000: the copy is acknowledged page by page, so smaller pages stretch it over more of the updates.
    first = run_cdc(settings=cdc_settings, config=ExtractConfig(source="cdc", page_size=1_000), endpoints=endpoints)
    copied_in = time.monotonic() - started
    updater.join(timeout=600)
    assert not updater.is_alive() and updater.error is None, updater.error
    final = cdc(cdc_settings, endpoints)
    stream.processAllAvailable()

    assert first.snapshot_rows == rows and updater.done == count
    # Most updates meet the copy (measured: all 10,000 within a 23 s copy), before and after their rows' pages.
    assert updater.during_copy >= count // 4, (updater.during_copy, copied_in)
    assert first.published + final.published == count
    assert assert_sinks_equal_source(settings, es, source_db, source_schema, pg_schema, es_prefix) == rows
