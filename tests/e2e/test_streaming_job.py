"""The streaming job end to end on the real stack: Kafka -> spark/streaming_job.py -> Postgres and Elasticsearch.

Most tests run the job's `run()` in the test's SparkSession (available-now) to spare a JVM start each; the crash,
outage and entry-point tests run `python -m spark.streaming_job` / `spark-submit` as real processes. Each test
writes to its own uuid-named topic, schema, indices and checkpoint folder.
"""

from __future__ import annotations

import datetime as dt
import decimal
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from elasticsearch import helpers

from include.connections import warehouse_session
from include.contract import tombstone_message
from include.entities import CHAT_SESSION, ENTITIES, EVENTO, LEAD, Entity
from include.schema import quote_ident
from include.settings import REPO_ROOT
from spark.streaming_job import parse_args, run
from tests.stream_support import (T0, as_bytes, chat_message, evento_message, external_version, lead_message,
                                  nth_order, poison_catalog, position, produce, with_members)

MAX_BYTES = 64 * 1024
MINUTE = dt.timedelta(minutes=1)
BUILDERS = {LEAD: lead_message, CHAT_SESSION: chat_message, EVENTO: evento_message}


@dataclass(frozen=True)
class Target:
    """Where one test's job reads and writes."""

    topic: str
    schema: str
    prefix: str
    checkpoint_root: Path
    query_name: str = "e2e"

    def args(self, trigger: str = "available-now", max_offsets: int = 50_000) -> list[str]:
        return ["--checkpoint-root", str(self.checkpoint_root), "--query-name", self.query_name,
                "--topic", self.topic, "--pg-schema", self.schema, "--es-index-prefix", self.prefix,
                "--trigger", trigger, "--max-offsets-per-trigger", str(max_offsets),
                "--max-payload-bytes", str(MAX_BYTES)]


@pytest.fixture
def target(kafka_topic, pg_schema, es_prefix, tmp_state):
    return Target(kafka_topic, pg_schema, es_prefix, tmp_state / "checkpoints")


@pytest.fixture
def db(settings, pg_schema):
    connection = warehouse_session(settings, pg_schema, autocommit=True)
    yield connection
    connection.close()


@pytest.fixture
def run_job(spark, settings, target):
    """Run the job to completion in this process (available-now)."""

    def run_once(max_offsets: int = 50_000):
        run(spark, parse_args(target.args(max_offsets=max_offsets)), settings)

    return run_once


def pg_counts(db) -> dict[str, int]:
    return {e.name: db.execute(f"SELECT count(*) FROM {quote_ident(e.table)}").fetchone()[0] for e in ENTITIES}


def es_documents(es, target: Target, entity: Entity) -> dict[str, dict]:
    index = entity.index_name(target.prefix)
    es.indices.refresh(index=index)
    return {hit["_id"]: {"version": hit["_version"], **hit["_source"]}
            for hit in helpers.scan(es, index=index, query={"query": {"match_all": {}}, "version": True})}


def es_counts(es, target: Target) -> dict[str, int]:
    counts = {}
    for entity in ENTITIES:
        index = entity.index_name(target.prefix)
        es.indices.refresh(index=index)
        counts[entity.name] = es.count(index=index)["count"]
    return counts


def micros(timestamp: dt.datetime) -> int:
    return round(timestamp.timestamp() * 1_000_000)


def instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def heartbeats(db, target: Target) -> tuple[int, int]:
    """(batches, input rows) the job's listener has recorded."""
    return db.execute("SELECT count(*), coalesce(sum(input_rows), 0) FROM stream_heartbeats WHERE query_name = %s",
                      [target.query_name]).fetchone()


def wait_until(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def mixed_messages(count: int, updates_every: int = 5) -> tuple[list[dict], dict[str, set[str]]]:
    """`count` messages over the three entities; every `updates_every`-th one is a newer version of an earlier id."""
    messages, ids = [], {e.name: set() for e in ENTITIES}
    entities = list(BUILDERS)
    for number in range(count):
        entity = entities[number % len(entities)]
        version = T0 + number * dt.timedelta(milliseconds=1)
        if number % updates_every == updates_every - 1 and ids[entity.name]:
            record_id = sorted(ids[entity.name])[number % len(ids[entity.name])]
        else:
            record_id = str(uuid.uuid4())
        ids[entity.name].add(record_id)
        order = version if entity.version_column else position(number + 1)  # later messages are newer
        messages.append(BUILDERS[entity](id=record_id, **{entity.order_column: order}))
    return messages, ids


# --- in-process runs ------------------------------------------------------------------------------------------------


def test_leads_sessions_and_events_land_with_every_field_intact(settings, es, db, target, run_job):
    lead = lead_message(nome="Zé d'Ávila \"Citação\"", localizacao={"lista": [1, 2.5, None], "vazio": {}})
    chat = chat_message(perguntas_feitas=["Qual o preço?", "Aceita Pix?"], ended_at=T0 + MINUTE, is_active=False)
    evento = evento_message(evento="compra_concluída", valor=decimal.Decimal("1999.99"))
    produce(settings, target.topic, [lead, chat, evento])
    run_job()

    stored = db.execute("SELECT nome, localizacao, interesse, score_qualificacao, created_at, updated_at, "
                        "processado_em FROM leads WHERE id = %s", [lead["id"]]).fetchone()
    assert stored == (lead["nome"], lead["localizacao"], lead["interesse"], 87, lead["created_at"],
                      lead["updated_at"], lead["processado_em"])
    assert db.execute("SELECT perguntas_feitas, ended_at, is_active, pages_visited FROM chat_sessions").fetchone() == (
        chat["perguntas_feitas"], chat["ended_at"], False, ["/", "/preços"])
    row = db.execute("SELECT evento, valor, occurred_at, payload FROM eventos_raw").fetchone()
    assert row[:3] == ("compra_concluída", evento["valor"], evento["occurred_at"])
    assert row[3]["evento"] == "compra_concluída" and row[3]["tipo_evento"] == "evento"

    lead_doc = es_documents(es, target, LEAD)[lead["id"]]
    assert (lead_doc["nome"], lead_doc["localizacao"], lead_doc["interesse"]) == (
        lead["nome"], lead["localizacao"], lead["interesse"])
    assert instant(lead_doc["updated_at"]) == lead["updated_at"] and lead_doc["version"] == micros(lead["updated_at"])
    chat_doc = es_documents(es, target, CHAT_SESSION)[chat["id"]]
    assert chat_doc["perguntas_feitas"] == chat["perguntas_feitas"] and instant(chat_doc["ended_at"]) == chat["ended_at"]
    evento_doc = es_documents(es, target, EVENTO)[evento["id"]]
    assert evento_doc["valor"] == 1999.99 and evento_doc["evento"] == "compra_concluída"
    hits = es.search(index=LEAD.index_name(target.prefix), query={"match": {"nome": "citação"}})["hits"]["hits"]
    assert [hit["_id"] for hit in hits] == [lead["id"]]

    # The listener wrote the batch's heartbeat with its offsets.
    beat = db.execute("SELECT input_rows, latest_offsets, run_id FROM stream_heartbeats WHERE query_name = %s",
                      [target.query_name]).fetchall()
    assert [b[0] for b in beat] == [3]
    assert sum(beat[0][1][target.topic].values()) == 3


def test_replaying_the_same_10000_messages_changes_nothing(settings, es, db, target, run_job):
    messages, ids = mixed_messages(10_000)
    produce(settings, target.topic, messages)
    run_job(max_offsets=5_000)
    expected = {name: len(found) for name, found in ids.items()}
    assert pg_counts(db) == expected
    assert es_counts(es, target) == expected
    tables = {e.table: db.execute(f"SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM {quote_ident(e.table)} t")
              .fetchone()[0] for e in ENTITIES}
    documents = {e.name: es_documents(es, target, e) for e in ENTITIES}

    produce(settings, target.topic, messages)
    run_job(max_offsets=5_000)
    assert heartbeats(db, target)[1] == 20_000, "the second run must have read the replayed messages"
    assert pg_counts(db) == expected
    assert es_counts(es, target) == expected
    assert {e.table: db.execute(f"SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM {quote_ident(e.table)} t")
            .fetchone()[0] for e in ENTITIES} == tables
    assert {e.name: es_documents(es, target, e) for e in ENTITIES} == documents
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0


def test_out_of_order_versions_end_newest_everywhere(settings, es, db, target, run_job):
    """Leads by their version column, sessions by their source position (include/entities.py)."""
    entities = (LEAD, CHAT_SESSION)
    label = {LEAD: "nome", CHAT_SESSION: "intencao_detectada"}
    # Version n of a record: its order, and that order as Elasticsearch's external version.
    order = {LEAD: lambda n: T0 + n * MINUTE, CHAT_SESSION: lambda n: position(0x1000 + n, 70_000 * (n % 2))}
    external = {LEAD: lambda n: micros(order[LEAD](n)), CHAT_SESSION: lambda n: ((0x1000 + n) << 16) + 65_535 * (n % 2)}
    messages = []
    for number in range(5_000):
        entity = entities[number % 2]
        record_id = str(uuid.uuid4())
        messages += [BUILDERS[entity](id=record_id, **{entity.order_column: order[entity](version),
                                                       label[entity]: f"v{version}"})
                     for version in range(4)]
    random.Random(4).shuffle(messages)
    produce(settings, target.topic, messages)
    run_job(max_offsets=3_000)  # versions of one id spread over several batches

    for entity in entities:
        column = quote_ident(label[entity])
        stale = db.execute(f"SELECT count(*) FROM {quote_ident(entity.table)} "
                           f"WHERE {column} <> 'v3' OR {quote_ident(entity.order_column)} <> %s",
                           [order[entity](3)]).fetchone()[0]
        assert stale == 0
        assert db.execute(f"SELECT count(*) FROM {quote_ident(entity.table)}").fetchone()[0] == 2_500
        documents = es_documents(es, target, entity)
        assert len(documents) == 2_500
        assert {(d[label[entity]], d["version"]) for d in documents.values()} == {("v3", external[entity](3))}


def test_poison_messages_go_to_dead_letters_and_valid_ones_land(settings, es, db, target, run_job):
    poison = poison_catalog(MAX_BYTES)
    valid = [BUILDERS[ENTITIES[n % len(ENTITIES)]]() for n in range(len(poison))]
    values = [value for pair in zip(valid, (p[1] for p in poison)) for value in pair]  # interleaved
    positions = produce(settings, target.topic, values)
    run_job()

    expected = {(position, reason) for position, (_, _, reason) in zip(positions[1::2], poison)}
    rows = db.execute("SELECT kafka_partition, kafka_offset, reason, topic, batch_id, raw_payload "
                      "FROM dead_letters").fetchall()
    assert {((p, o), reason) for p, o, reason, _, _, _ in rows} == expected
    assert {(topic, batch_id is not None) for _, _, _, topic, batch_id, _ in rows} == {(target.topic, True)}
    payloads = {(p, o): raw for p, o, _, _, _, raw in rows}
    by_name = {name: (position, value) for position, (name, value, _) in zip(positions[1::2], poison)}
    for name in ("score as text", "NUL in json", "oversized"):  # raw payloads kept whole, as produced
        position, value = by_name[name]
        assert payloads[position] == as_bytes(value).decode(), name
    per_entity = {e.name: sum(1 for v in valid if v["tipo_evento"] == e.tipo_evento) for e in ENTITIES}
    assert pg_counts(db) == per_entity
    assert es_counts(es, target) == per_entity


def test_a_message_nested_1000_deep_is_a_dead_letter_and_the_next_one_in_its_partition_lands(settings, es, db, target,
                                                                                              run_job):
    # 2 KB that made the validator raise RecursionError: the batch failed, and every replay of it.
    lead = lead_message()
    nested = with_members(lead_message(id=lead["id"]), localizacao="DEEP").replace('"DEEP"', "[" * 1000 + "]" * 1000)
    positions = produce(settings, target.topic, [nested, lead], key=lead["id"].encode())
    assert positions[1] == (positions[0][0], positions[0][1] + 1)
    run_job()

    assert db.execute("SELECT kafka_partition, kafka_offset, reason, raw_payload FROM dead_letters").fetchall() == [
        (*positions[0], "too_deep", nested)]
    assert db.execute("SELECT id::text FROM leads").fetchall() == [(lead["id"],)]
    assert list(es_documents(es, target, LEAD)) == [lead["id"]]


def test_update_then_tombstone_then_older_update_stays_deleted(settings, es, db, target, run_job):
    lead_id, session_id = lead_message()["id"], chat_message()["id"]
    produce(settings, target.topic, [
        lead_message(id=lead_id, updated_at=T0 + 2 * MINUTE),
        chat_message(id=session_id, source_position=position(0x2000)),
        tombstone_message(LEAD, lead_id, T0 + 3 * MINUTE),
        tombstone_message(CHAT_SESSION, session_id, position(0x3000)),
    ])
    run_job()
    assert pg_counts(db) == {"lead": 0, "chat_session": 0, "evento": 0}
    assert es_counts(es, target) == {"lead": 0, "chat_session": 0, "evento": 0}

    # Elasticsearch forgets a deleted document's version after index.gc_deletes (60 s by default); make it forget
    # now, so only the job's own memory of the deletion (deleted_records) can keep the older update out.
    indices = ",".join(e.index_name(target.prefix) for e in ENTITIES)
    es.indices.put_settings(index=indices, settings={"index.gc_deletes": "0s"})
    produce(settings, target.topic, [lead_message(id=lead_id, updated_at=T0 + MINUTE),
                                     chat_message(id=session_id, source_position=position(0x1000))])
    run_job()
    assert pg_counts(db) == {"lead": 0, "chat_session": 0, "evento": 0}
    assert es_counts(es, target) == {"lead": 0, "chat_session": 0, "evento": 0}
    assert db.execute("SELECT entity, id::text FROM deleted_records ORDER BY entity").fetchall() == [
        ("chat_session", session_id), ("lead", lead_id)]


# --- real processes ---------------------------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # the task ended while we listed it
            continue
    return [d for child in children for d in (child, *descendants(child))]


class JobProcess:
    """`python -m spark.streaming_job` (or spark-submit) as a child process, its output in a log file."""

    def __init__(self, command: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(env or {})})

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the driver: its JVM and Python process, each by pid."""
        for pid in reversed([self.process.pid, *descendants(self.process.pid)]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        self.process.wait(timeout=60)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_job(target, tmp_state):
    started: list[JobProcess] = []

    def start(trigger: str = "available-now", max_offsets: int = 50_000, env=None, launcher=None) -> JobProcess:
        command = launcher or [sys.executable, "-m", "spark.streaming_job"]
        job = JobProcess([*command, *target.args(trigger, max_offsets)], tmp_state / f"job-{len(started)}.log", env)
        started.append(job)
        return job

    yield start
    for job in started:  # a failed test must not leave a driver behind
        if job.process.poll() is None:
            job.kill()


def test_driver_killed_mid_run_three_times_loses_nothing(settings, es, db, target, start_job):
    # 60,000 messages (30,000 ids, two versions each, shuffled) in batches of 7,500: each killed run commits at
    # least one batch, so three kills leave batches for the final run. The 100,000 took ~2.3 min for one
    # clean run on this shared 2-core machine; with three kills and restarts it would break the suite's budget.
    messages = []
    for number in range(30_000):
        entity = ENTITIES[number % len(ENTITIES)]
        record_id = str(uuid.uuid4())
        messages += [BUILDERS[entity](id=record_id, **{entity.order_column: nth_order(entity, version)})
                     for version in range(2)]
    random.Random(7).shuffle(messages)
    produce(settings, target.topic, messages)

    kills = 0
    while kills < 3:
        job = start_job(max_offsets=7_500)
        batches_before = heartbeats(db, target)[0]
        wait_until(lambda: heartbeats(db, target)[0] > batches_before or job.process.poll() is not None,
                   timeout=180, what="a batch of this run to commit")
        assert job.process.poll() is None, f"the run ended before it could be killed:\n{job.output()[-3000:]}"
        time.sleep(random.Random(kills).uniform(0.0, 2.0))  # land inside the next batch
        job.kill()
        kills += 1
    final = start_job(max_offsets=7_500)
    assert final.wait(timeout=600) == 0, final.output()[-5000:]

    expected = {e.name: 10_000 for e in ENTITIES}
    assert pg_counts(db) == expected
    assert es_counts(es, target) == expected
    for entity in ENTITIES:
        newest = nth_order(entity, 1)
        stale = db.execute(f"SELECT count(*) FROM {quote_ident(entity.table)} "
                           f"WHERE {quote_ident(entity.order_column)} <> %s", [newest]).fetchone()[0]
        assert stale == 0
        assert {d["version"] for d in es_documents(es, target, entity).values()} == {external_version(newest)}
    assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0


class TcpProxy:
    """Forwards a loopback port to Elasticsearch; `cut()` makes it unreachable, `restore()` reopens the same port."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = 0
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def cut(self) -> None:
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                sock.close()
            self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # the listener was closed by cut()
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:  # either side was closed (by cut() or the peer): this direction is done
            return
        finally:
            sink.close()


def test_elasticsearch_outage_fails_the_query_and_a_restart_catches_up(settings, es, db, target, start_job):
    proxy = TcpProxy(settings.es_host, settings.es_port)
    try:
        first, ids_first = mixed_messages(1_500)
        produce(settings, target.topic, first)
        env = {"PIPELINE_ES_PORT": str(proxy.port)}
        job = start_job(trigger="processing-time=1 second", max_offsets=2_000, env=env)
        wait_until(lambda: heartbeats(db, target)[1] >= len(first) or job.process.poll() is not None,
                   timeout=240, what="the first messages to be processed")
        assert job.process.poll() is None, job.output()[-5000:]

        proxy.cut()
        second, ids_second = mixed_messages(1_500)
        produce(settings, target.topic, second)
        exit_code = job.wait(timeout=240)
        assert exit_code != 0, "the query must fail when Elasticsearch is unreachable"
        assert "ConnectionError" in job.output() or "Connection refused" in job.output()

        proxy.restore()
        again = start_job(max_offsets=2_000, env=env)
        assert again.wait(timeout=300) == 0, again.output()[-5000:]
    finally:
        proxy.cut()

    expected = {name: len(ids_first[name] | ids_second[name]) for name in ids_first}
    assert pg_counts(db) == expected
    assert es_counts(es, target) == expected


def test_bad_configuration_stops_at_start_up_naming_the_setting(target, tmp_state):
    spark_submit = Path(sys.executable).parent / "spark-submit"
    cases = [
        ([sys.executable, "-m", "spark.streaming_job", "--trigger", "available-now"], "--checkpoint-root"),
        ([str(spark_submit), "spark/streaming_job.py", *target.args(trigger="every-minute")], "--trigger"),
        ([sys.executable, "-m", "spark.streaming_job", *target.args(max_offsets=0)], "--max-offsets-per-trigger"),
    ]
    for command, setting in cases:
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        # spark-submit runs the script with its stderr merged into stdout.
        assert setting in done.stdout + done.stderr, done.stdout + done.stderr
