"""Faults on the real stack while the streaming job runs: the Kafka broker SIGKILLed and restarted, Postgres stopped
`-m immediate` (crash recovery empties the UNLOGGED staging) and restarted mid-batch, retention deleting offsets
the job had not read, the topic deleted and recreated, partitions added. Each scenario has its own topic, schema,
indices and checkpoint, and ends with the same check (`assert_every_offset_accounted`): every offset produced is in
its sink at a version at least its own, or a dead letter, or inside a range the job recorded in lost_offsets; no
duplicate; no version regression; Postgres and Elasticsearch hold the same ids at the same versions; and a message
produced afterwards lands.

The job's query runs in this test's SparkSession (build_query, a processing-time trigger), so the scenarios share
one JVM; when the query fails (a sink outage fails the batch, by design) it is started again the way
stream_supervisor restarts a failed driver, and the restarts are part of what each scenario shows. The services a
scenario crashes are healthy again at its teardown, whatever happened.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient, NewPartitions, NewTopic
from kafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

from include.connections import warehouse_session
from include.entities import LEAD
from include.schema import STREAM_STAGE_TABLE, apply_sql, quote_ident, warehouse_ddl
from spark.streaming_job import build_query, parse_args
from stack.services import Kafka, Postgres
from tests.conftest import unique_name
from tests.e2e.test_streaming_job import es_documents, micros
from tests.stream_support import T0, lead_message, produce

log = logging.getLogger(__name__)
MAX_BYTES = 64 * 1024
MINUTE = dt.timedelta(minutes=1)
POISON = "{not json"
RESTART_BACKOFF_SECONDS = 2.0


class Stream:
    """The job's query on one scenario's objects, started again when it fails (as the supervisor does)."""

    def __init__(self, spark, settings, args: list[str]):
        self.spark, self.settings, self.config = spark, settings, parse_args(args)
        self.query = None
        self.started_at = 0.0
        self.failures: list[str] = []

    def start(self) -> None:
        self.started_at = time.monotonic()
        try:
            self.query = build_query(self.spark, self.config, self.settings)
        except Exception as error:  # noqa: BLE001 - a start refused during an outage is a failure like any other
            self.query = None
            self.failures.append(f"start: {type(error).__name__}: {str(error)[:300]}")

    def supervise(self) -> None:
        """Start the query again if it ended, after a short backoff."""
        if self.query is not None and self.query.isActive:
            return
        if self.query is not None:
            failure = self.query.exception()
            self.failures.append(f"query: {str(failure)[:300]}" if failure else "query: stopped")
            log.info("query %s ended (%s); starting it again", self.config.query_name, self.failures[-1])
            self.query = None
        if time.monotonic() - self.started_at >= RESTART_BACKOFF_SECONDS:
            self.start()

    def stop(self) -> None:
        if self.query is not None and self.query.isActive:
            self.query.stop()
        self.query = None


@dataclass(frozen=True)
class Sent:
    incarnation: int  # which creation of the topic it was produced to
    partition: int
    offset: int
    id: str | None  # None: a poison message
    version: dt.datetime | None


@dataclass
class Scenario:
    settings: object
    es: object
    topic: str
    schema: str
    prefix: str
    checkpoint_root: Path
    stream: Stream | None = None
    incarnation: int = 0
    sent: list[Sent] = field(default_factory=list)

    def args(self, max_offsets: int) -> list[str]:
        return ["--checkpoint-root", str(self.checkpoint_root), "--query-name", "faults", "--topic", self.topic,
                "--pg-schema", self.schema, "--es-index-prefix", self.prefix, "--trigger", "processing-time=1 second",
                "--max-offsets-per-trigger", str(max_offsets), "--max-payload-bytes", str(MAX_BYTES)]

    def start(self, spark, max_offsets: int = 1_000) -> Stream:
        self.stream = Stream(spark, self.settings, self.args(max_offsets))
        self.stream.start()
        return self.stream

    def db(self) -> psycopg.Connection:
        """A new warehouse session on the scenario's schema (a crashed Postgres broke the older ones)."""
        return warehouse_session(self.settings, self.schema, autocommit=True)

    def send(self, ids: int, versions: int = 2, poison: int = 3, seed: int = 0) -> list[Sent]:
        """`ids` leads in `versions` versions each, shuffled (older versions often come later), and `poison`
        unparseable messages; returns what was sent, with its Kafka position."""
        rng = random.Random(seed)
        base = T0 + rng.randrange(1_000) * MINUTE
        values = [lead_message(id=record_id, updated_at=base + version * MINUTE)
                  for record_id in (str(uuid.uuid4()) for _ in range(ids)) for version in range(versions)]
        values += [POISON] * poison
        rng.shuffle(values)
        positions = produce(self.settings, self.topic, values)
        sent = [Sent(self.incarnation, partition, offset, *((v["id"], v["updated_at"]) if isinstance(v, dict)
                                                           else (None, None)))
                for (partition, offset), v in zip(positions, values)]
        self.sent += sent
        return sent

    def settle(self, condition, timeout: float, what: str):
        """Wait for `condition`, keeping the query running meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.stream.supervise()
            value = condition()
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; query failures: "
                             f"{self.stream.failures}")

    def ledger(self) -> dict[int, int]:
        with self.db() as db:
            return dict(db.execute("SELECT kafka_partition, last_offset FROM stream_offsets WHERE topic = %s",
                                   [self.topic]).fetchall())

    def lost(self) -> list[tuple]:
        with self.db() as db:
            return db.execute("SELECT kafka_partition, from_offset, to_offset, reason, previous_offset "
                              "FROM lost_offsets WHERE topic = %s ORDER BY id", [self.topic]).fetchall()

    def merged_up_to(self, sent: list[Sent]):
        """A condition: the ledger reached the last offset of every partition `sent` went to."""
        ends: dict[int, int] = {}
        for s in sent:
            ends[s.partition] = max(ends.get(s.partition, -1), s.offset)
        return lambda: all(self.ledger().get(p, -1) >= end for p, end in ends.items())

    def admin(self) -> KafkaAdminClient:
        return KafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap, client_id="test-faults",
                                request_timeout_ms=20_000)


def create_topic(admin: KafkaAdminClient, topic: str, partitions: int, timeout: float = 60) -> None:
    """Create `topic`, waiting while a deletion of the same name is still under way."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
            return
        except TopicAlreadyExistsError:  # the previous topic of that name is still being deleted
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def restore(*services) -> None:
    for service in services:
        if not service.health().healthy:
            service.restart()


@pytest.fixture
def services(settings):
    """Postgres and Kafka of the stack; whatever a scenario did to them, they are healthy again afterwards."""
    postgres, kafka = Postgres(settings), Kafka(settings)
    yield postgres, kafka
    restore(postgres, kafka)


@pytest.fixture
def scenario(spark, settings, es, services, tmp_state):
    """A topic, a warehouse schema, an index prefix and a checkpoint of the scenario's own, removed afterwards
    through new connections (a crash broke the older ones), after the services are healthy again."""
    sc = Scenario(settings, es, unique_name("faults"), unique_name("faults"), unique_name("faults"),
                  tmp_state / "checkpoints")
    admin = sc.admin()
    create_topic(admin, sc.topic, settings.kafka_partitions)
    admin.close()
    with warehouse_session(settings, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {quote_ident(sc.schema)}")
    with sc.db() as db:
        apply_sql(db, warehouse_ddl())
    try:
        yield sc
    finally:
        if sc.stream is not None:
            sc.stream.stop()
        restore(*services)
        admin = sc.admin()
        try:
            admin.delete_topics([sc.topic])
        except UnknownTopicOrPartitionError:  # a scenario that recreates the topic may have left none
            pass
        admin.close()
        with warehouse_session(settings, autocommit=True) as db:
            db.execute(f"DROP SCHEMA {quote_ident(sc.schema)} CASCADE")
        es.indices.delete(index=f"{sc.prefix}*", ignore_unavailable=True, allow_no_indices=True,
                          expand_wildcards="all")


def is_lost(s: Sent, lost: list[tuple], incarnations: int) -> bool:
    """Inside a recorded lost range: offsets the broker no longer held ('skipped'); after a reset, what the old topic
    held past the last offset merged, and the new topic's offsets before the first one read."""
    for partition, first, last, reason, previous in lost:
        if partition != s.partition:
            continue
        if reason == "skipped" and first <= s.offset <= last:
            return True
        if reason == "reset" and ((s.incarnation < incarnations - 1 and s.offset > previous)
                                  or (s.incarnation == incarnations - 1 and first <= s.offset <= last)):
            return True
    return False


def sink_versions(sc: Scenario) -> tuple[dict[str, int], dict[str, int]]:
    """id -> version in epoch microseconds, in Postgres and in Elasticsearch."""
    with sc.db() as db:
        rows = db.execute("SELECT id::text, updated_at FROM leads").fetchall()
    return {i: micros(v) for i, v in rows}, {i: d["version"] for i, d in es_documents(sc.es, sc, LEAD).items()}


def unaccounted(sc: Scenario) -> list[Sent]:
    """Valid messages not yet at a version at least their own in Postgres, poison not yet a dead letter, and not
    inside a recorded lost range."""
    lost = sc.lost()
    with sc.db() as db:
        dead = set(db.execute("SELECT kafka_partition, kafka_offset FROM dead_letters WHERE topic = %s",
                              [sc.topic]).fetchall())
        versions = dict(db.execute("SELECT id::text, updated_at FROM leads").fetchall())
    return [s for s in sc.sent
            if not is_lost(s, lost, sc.incarnation + 1)
            and not ((s.partition, s.offset) in dead if s.id is None
                     else s.id in versions and versions[s.id] >= s.version)]


def assert_every_offset_accounted(sc: Scenario, timeout: float = 240) -> None:
    # The stream still moves: a message produced now lands in both sinks.
    probe = sc.send(ids=1, versions=1, poison=0, seed=99)[0]
    sc.settle(lambda: probe.id in sink_versions(sc)[1], timeout, "a message produced after the fault to land")
    sc.settle(lambda: not unaccounted(sc), timeout, "every offset to be accounted for")
    missing = unaccounted(sc)
    assert not missing, f"{len(missing)} offsets unaccounted for, e.g. {missing[:3]}"

    postgres, elastic = sink_versions(sc)
    assert postgres == elastic, "Postgres and Elasticsearch disagree on ids or versions"
    lost = sc.lost()
    delivered = [s for s in sc.sent if s.id is not None and not is_lost(s, lost, sc.incarnation + 1)]
    sent_versions: dict[str, set[int]] = {}
    for s in sc.sent:
        if s.id is not None:
            sent_versions.setdefault(s.id, set()).add(micros(s.version))
    # No version regression: every id holds one of its own versions, at least that of every delivered message.
    assert set(postgres) <= set(sent_versions)
    assert all(postgres[i] in sent_versions[i] for i in postgres)
    assert all(postgres[s.id] >= micros(s.version) for s in delivered)
    with sc.db() as db:
        dead = db.execute("SELECT kafka_partition, kafka_offset, reason FROM dead_letters WHERE topic = %s",
                          [sc.topic]).fetchall()
    # No duplicate: one dead letter per poison offset, none for a valid message.
    poison = {(s.partition, s.offset) for s in sc.sent if s.id is None}
    assert len({(p, o) for p, o, _ in dead}) == len(dead)
    assert {(p, o) for p, o, _ in dead} <= poison and {r for _, _, r in dead} <= {"invalid_json"}
    log.info("scenario %s: %s offsets, %s lost ranges, query failures %s", sc.topic, len(sc.sent), len(lost),
             sc.stream.failures)


def staging_holds_rows(sc: Scenario) -> bool:
    with sc.db() as db:
        return db.execute(f"SELECT EXISTS (SELECT 1 FROM {quote_ident(STREAM_STAGE_TABLE)})").fetchone()[0]


# --- scenarios ---------------------------------------------------------------------------------------------------


def test_kafka_broker_killed_and_restarted_mid_stream(spark, scenario, services):
    _, kafka = services
    scenario.start(spark, max_offsets=200)
    first = scenario.send(ids=300)
    scenario.settle(lambda: scenario.ledger(), 180, "a first batch to merge")
    assert not scenario.merged_up_to(first)(), "the fault must come while batches are still pending"
    kafka.crash()
    time.sleep(2)
    kafka.restart()
    scenario.send(ids=100, seed=1)
    assert_every_offset_accounted(scenario)
    assert scenario.lost() == []


def test_postgres_crashed_and_restarted_mid_batch(spark, scenario, services):
    postgres, _ = services
    scenario.start(spark, max_offsets=500)
    scenario.send(ids=600)
    # Some tasks of a batch have committed their staging, the merge has not run: crash recovery empties staging.
    scenario.settle(lambda: staging_holds_rows(scenario), 180, "a batch half staged")
    postgres.crash()
    postgres.restart()
    assert_every_offset_accounted(scenario)
    assert scenario.stream.failures, "the batch in flight must have failed and been replayed"
    assert scenario.lost() == []


def test_retention_deleting_unread_offsets_is_recorded_and_skipped(spark, scenario, services):
    stream = scenario.start(spark)
    first = scenario.send(ids=150)
    scenario.settle(scenario.merged_up_to(first), 180, "the first messages to merge")
    stream.stop()
    ends = scenario.ledger()

    unread = scenario.send(ids=150, seed=1)
    per_partition: dict[int, int] = {}
    for s in unread:
        per_partition[s.partition] = per_partition.get(s.partition, 0) + 1
    cut = {p: ends[p] + 1 + count // 2 for p, count in per_partition.items()}  # half of them deleted unread
    admin = scenario.admin()
    admin.delete_records({TopicPartition(scenario.topic, p): offset for p, offset in cut.items()})
    admin.close()
    scenario.send(ids=50, seed=2)

    stream.start()
    assert_every_offset_accounted(scenario)
    assert sorted(scenario.lost()) == sorted((p, ends[p] + 1, cut[p] - 1, "skipped", ends[p]) for p in cut)


def test_topic_deleted_and_recreated_while_the_job_runs(spark, scenario, services):
    scenario.start(spark)
    first = scenario.send(ids=30)
    scenario.settle(scenario.merged_up_to(first), 180, "the first messages to merge")
    ends = scenario.ledger()

    admin = scenario.admin()
    admin.delete_topics([scenario.topic])
    create_topic(admin, scenario.topic, scenario.settings.kafka_partitions)
    admin.close()
    scenario.incarnation += 1
    # Spark resumes each partition at its checkpointed offset, so it reads the new topic only once the new topic's
    # offsets pass the old ones: fill every partition past them.
    seed = 1
    while True:
        new = [s for s in scenario.sent if s.incarnation == 1]
        if all(max((s.offset for s in new if s.partition == p), default=-1) > end for p, end in ends.items()):
            break
        scenario.send(ids=40, seed=seed)
        seed += 1
    assert_every_offset_accounted(scenario)
    # The new topic's offsets up to the old topic's last one were never read: on record as a reset per partition,
    # found by the topic's id (the offsets alone look contiguous).
    assert sorted(scenario.lost()) == sorted((p, 0, end, "reset", end) for p, end in ends.items())


def test_partitions_added_while_the_job_runs(spark, scenario, services):
    scenario.start(spark)
    first = scenario.send(ids=150)
    scenario.settle(scenario.merged_up_to(first), 180, "the first messages to merge")

    admin = scenario.admin()
    total = scenario.settings.kafka_partitions + 2
    admin.create_partitions({scenario.topic: NewPartitions(total_count=total)})
    admin.close()
    second = scenario.send(ids=300, seed=1)
    assert {s.partition for s in second} == set(range(total)), "the new partitions must get messages"
    assert_every_offset_accounted(scenario)
    assert set(scenario.ledger()) == set(range(total))
    assert scenario.lost() == []
