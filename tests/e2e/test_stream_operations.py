"""The streaming job's operation on the local stack, through `airflow dags test` of each DAG.

One supervised query for the whole module, on objects of its own: a uuid topic, warehouse and Supabase schemas,
index prefix, query name and checkpoint root. The tests run in order and each builds on the state the previous
one left (the scenario of a day in production):

1. stream_supervisor, available-now: a catch-up run (another query) ends successfully with the data in both
   sinks, while the supervised query starts in the background (concurrently, to save time).
2. stream_supervisor, processing-time, in the background: the job runs under the driver lock; a second driver
   is refused.
3. SIGKILL of the driver: it is resubmitted well within one watchdog interval, and the watchdog finds it healthy;
   sampling every 0.2 s proves there was never a second driver JVM on the checkpoint, and the new driver took the
   lock only after the old one died.
4. A stalled driver (SIGSTOP, messages waiting): the watchdog detects it and the job is restarted.
5. stream_deploy of a new version: both data-quality gates pass, the new version runs.
6. Elasticsearch missing documents: the gate fails with a readable reason and the deploy is refused, leaving the
   running version untouched.
7. stream_deploy of a broken version: it crashes, the previous version is restored, the run fails with the cause.
8. stream_watchdog after those failures: the run fails, naming the causes read from the driver logs.
9. checkpoint_purge: removes exactly the orphaned old folder and reports the bytes freed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from include.connections import warehouse_session
from include.entities import CHAT_SESSION, LEAD
from include.orchestration import driver_lock
from include.orchestration.config import StreamOpsConfig
from include.orchestration.control import wait_until_healthy
from include.orchestration.driver_lock import LOCK_BUSY_EXIT, process_stat
from include.orchestration.health import Health, HealthPolicy, classify_job_health
from include.orchestration.observe import observe_job
from include.orchestration.processes import stop_driver
from include.orchestration.releases import ReleaseStore
from include.orchestration.supervision import QueryFiles, read_exits
from include.schema import apply_sql, quote_ident, warehouse_ddl
from include.settings import REPO_ROOT
from stack.standin import apply_standin
from tests.stream_support import T0, chat_message, driver_jvms, evento_message, lead_message, produce

pytestmark = pytest.mark.timeout(1800)

VENV_BIN = Path(sys.executable).parent
STALL_SECONDS = 20
STARTUP_GRACE_SECONDS = 40
WATCHDOG_INTERVAL_SECONDS = 300  # the default schedule: the bar for "back within one interval"
TIMINGS: dict[str, float] = {}


class Stack:
    """The module's objects and how to run Airflow against them."""

    def __init__(self, settings, tmp: Path):
        token = uuid.uuid4().hex[:10]
        self.settings = settings
        self.tmp = tmp
        self.topic = f"e2e_ops_{token}"
        self.schema = f"e2e_ops_{token}"
        self.prefix = f"e2e_ops_{token}"
        self.query = f"e2e_ops_{token}"
        self.checkpoints = tmp / "checkpoints"
        self.versions = [f"e2e-{token}-{name}" for name in ("v2", "v3", "broken")]
        self.env = {
            "PIPELINE_KAFKA_TOPIC": self.topic,
            "PIPELINE_STREAM_CHECKPOINT_ROOT": str(self.checkpoints),
            "PIPELINE_STREAM_QUERY_NAME": self.query,
            "PIPELINE_STREAM_PG_SCHEMA": self.schema,
            "PIPELINE_STREAM_ES_INDEX_PREFIX": self.prefix,
            "PIPELINE_DQ_SOURCE_SCHEMA": self.schema,
            "PIPELINE_STREAM_TRIGGER_SECONDS": "2",
            "PIPELINE_STREAM_STOP_GRACE_SECONDS": "20",
            "PIPELINE_SUPERVISOR_BACKOFF_SECONDS": "3",
            "PIPELINE_WATCHDOG_STALL_SECONDS": str(STALL_SECONDS),
            "PIPELINE_WATCHDOG_STARTUP_GRACE_SECONDS": str(STARTUP_GRACE_SECONDS),
            "PIPELINE_WATCHDOG_RECOVERY_SECONDS": "300",
            "PIPELINE_DEPLOY_GATE_TIMEOUT_SECONDS": "15",
            "PIPELINE_SPARK_DRIVER_MEMORY": "1g",
        }
        self.leads: list[dict] = []
        self.supervisor: subprocess.Popen | None = None
        self.supervisor_started = 0.0

    def config(self, **extra) -> StreamOpsConfig:
        return StreamOpsConfig.load({**os.environ, **self.env, **extra})

    @property
    def files(self) -> QueryFiles:
        return self.config().files

    def airflow_env(self, extra: dict | None = None) -> dict:
        return {**os.environ, **self.settings.airflow_environment(),
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **self.env, **(extra or {})}

    def dags_test(self, dag_id: str, conf: dict | None = None, extra: dict | None = None, name: str = "",
                  timeout: float = 900) -> tuple[int, str]:
        command = [str(VENV_BIN / "airflow"), "dags", "test", dag_id] + (["-c", json.dumps(conf)] if conf else [])
        started = time.monotonic()
        run = subprocess.run(command, env=self.airflow_env(extra), cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=timeout)
        TIMINGS[f"dags test {dag_id} {name}".strip()] = time.monotonic() - started
        output = run.stdout + run.stderr
        (self.tmp / f"{dag_id}-{name or 'run'}-{int(time.time())}.log").write_text(output)
        return run.returncode, output

    def warehouse(self):
        import psycopg

        return closing(psycopg.connect(self.settings.pg_dsn(self.settings.pg_warehouse_db), autocommit=True))

    def count(self, table: str) -> int:
        with self.warehouse() as connection:
            return connection.execute(f"SELECT count(*) FROM {quote_ident(self.schema)}.{quote_ident(table)}"
                                      ).fetchone()[0]

    def observe(self, connection):
        return lambda: observe_job(self.checkpoints / self.query, self.query, connection,
                                   self.settings.kafka_bootstrap, self.topic, self.schema)

    def wait_for(self, what: str, condition, timeout: float = 300, interval: float = 1.0):
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(interval)


class DriverSampler(threading.Thread):
    """Samples the driver JVMs on the checkpoint and the lock holder every 0.2 s."""

    def __init__(self, stack: Stack):
        super().__init__(daemon=True)
        self.stack = stack
        self.samples: list[tuple[float, frozenset[int], int | None]] = []
        self.running = True

    def run(self):
        lock = self.stack.files.driver_lock
        while self.running:
            holder = lock.holder()
            self.samples.append((time.time(), frozenset(driver_jvms(self.stack.checkpoints)),
                                 holder.pid if holder else None))
            time.sleep(0.2)

    def stop(self):
        self.running = False
        self.join()

    def assert_never_two_drivers(self):
        assert self.samples, "no samples taken"
        worst = max(self.samples, key=lambda s: len(s[1]))
        assert len(worst[1]) <= 1, f"two drivers on the checkpoint at {worst[0]}: {sorted(worst[1])}"
        for _, jvms, holder in self.samples:
            if jvms and holder:
                assert jvms == {holder}, f"a driver JVM {sorted(jvms)} ran without holding the lock ({holder})"


@pytest.fixture(scope="module")
def stack(settings, tmp_path_factory):
    import psycopg
    from elasticsearch import Elasticsearch
    from kafka.admin import KafkaAdminClient, NewTopic

    ops = Stack(settings, tmp_path_factory.mktemp("stream_ops"))
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="pytest-e2e-ops")
    admin.create_topics([NewTopic(ops.topic, num_partitions=settings.kafka_partitions, replication_factor=1)])
    with psycopg.connect(settings.pg_dsn(settings.pg_warehouse_db), autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {quote_ident(ops.schema)}")
    with warehouse_session(settings, ops.schema) as connection:
        apply_sql(connection, warehouse_ddl())
    with psycopg.connect(settings.pg_dsn(settings.pg_source_db), autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {quote_ident(ops.schema)}")
    with psycopg.connect(settings.pg_dsn(settings.pg_source_db)) as connection:
        apply_standin(connection, schema=ops.schema)
    try:
        yield ops
    finally:
        started = time.monotonic()
        if ops.supervisor and ops.supervisor.poll() is None:
            ops.supervisor.send_signal(signal.SIGTERM)  # the task's on_kill stops the driver
            try:
                ops.wait_for("on_kill to stop the driver", lambda: not ops.files.driver_lock.is_held(), timeout=60)
            finally:
                os.killpg(ops.supervisor.pid, signal.SIGKILL)  # `dags test` would retry the task
                ops.supervisor.wait()
        stop_driver(ops.files.driver_lock, grace=10)
        admin.delete_topics([ops.topic])
        admin.close()
        for database in (settings.pg_warehouse_db, settings.pg_source_db):
            with psycopg.connect(settings.pg_dsn(database), autocommit=True) as connection:
                connection.execute(f"DROP SCHEMA IF EXISTS {quote_ident(ops.schema)} CASCADE")
        es = Elasticsearch(settings.es_url, request_timeout=30)
        es.indices.delete(index=f"{ops.prefix}_*", ignore_unavailable=True, allow_no_indices=True)
        es.close()
        _remove_releases(ops)
        TIMINGS["teardown"] = time.monotonic() - started
        print("\ne2e stream operations timings (s): "
              + ", ".join(f"{name} {seconds:.0f}" for name, seconds in TIMINGS.items())
              + f"; total {sum(TIMINGS.values()):.0f}")


def _remove_releases(ops: Stack) -> None:
    """The module's pointers, its deploy versions, and the working-tree release it packaged unless another
    pointer (a real deployment) still names it."""
    store = ReleaseStore(ops.config().releases_root)
    ours = [store.root / f"{query}.current" for query in (ops.query, f"{ops.query}_catchup")]
    versions = set(ops.versions) | {p.read_text().strip() for p in ours if p.exists()}
    for pointer in ours:
        pointer.unlink(missing_ok=True)
    in_use = {p.read_text().strip() for p in store.root.glob("*.current")}
    for version in versions - in_use:
        shutil.rmtree(store.root / version, ignore_errors=True)


def add_leads(stack: Stack, count: int) -> list[dict]:
    """Leads written to the Supabase stand-in schema and published to the topic, as the extraction would: at the
    messages' version, so the gate's content comparison finds the source and the sinks equal."""
    import psycopg

    with psycopg.connect(stack.settings.pg_dsn(stack.settings.pg_source_db), autocommit=True) as connection:
        ids = [r[0] for r in connection.execute(
            f"INSERT INTO {quote_ident(stack.schema)}.leads (nome, updated_at) SELECT 'e2e ' || n, %s "
            "FROM generate_series(1, %s) n RETURNING id::text", (T0, count))]
    leads = [lead_message(id=lead_id) for lead_id in ids]
    produce(stack.settings, stack.topic, leads)
    stack.leads.extend(leads)
    return leads


def _seed(stack: Stack) -> None:
    """Leads and chat sessions in the Supabase stand-in schema and on the topic, plus events (no source). Sessions
    have no version to compare, so the gate compares their content: the source holds exactly the messages' rows."""
    import psycopg

    chats = [chat_message(total_messages=n) for n in range(4)]
    columns = CHAT_SESSION.field_names
    with psycopg.connect(stack.settings.pg_dsn(stack.settings.pg_source_db), autocommit=True) as connection:
        connection.cursor().executemany(
            f"INSERT INTO {quote_ident(stack.schema)}.chat_sessions ({', '.join(map(quote_ident, columns))}) "
            f"VALUES ({', '.join(['%s'] * len(columns))})", [[chat[name] for name in columns] for chat in chats])
    produce(stack.settings, stack.topic, chats + [evento_message() for _ in range(5)])
    add_leads(stack, 6)


def test_1_supervisor_catch_up_run(stack):
    _seed(stack)
    log = (stack.tmp / "supervisor.log").open("w")
    stack.supervisor = subprocess.Popen([str(VENV_BIN / "airflow"), "dags", "test", "stream_supervisor"],
                                        env=stack.airflow_env(), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
    stack.supervisor_started = time.monotonic()
    # Two `dags test` syncing the same DAG to the metadata database at once collide; the supervisor's task
    # running means its sync is done.
    stack.wait_for("the supervisor task", stack.files.supervisor_lock.is_held, timeout=300)
    catch_up = f"{stack.query}_catchup"

    code, output = stack.dags_test("stream_supervisor", conf={"trigger": "available-now"}, name="available-now",
                                   extra={"PIPELINE_STREAM_QUERY_NAME": catch_up})

    assert code == 0, output[-5000:]
    assert "DagRun Finished: dag_id=stream_supervisor" in output and "state=success" in output
    assert "finished: no more data" in output
    assert (stack.count("leads"), stack.count("chat_sessions"), stack.count("eventos_raw")) == (6, 4, 5)
    last = read_exits(QueryFiles(stack.checkpoints / catch_up))[-1]
    assert (last.exit_code, last.failure) == (0, False)


def test_2_supervised_driver_holds_the_lock_and_a_second_is_refused(stack):
    lock = stack.files.driver_lock
    holder = stack.wait_for("the supervised driver", lock.holder, timeout=300)
    assert holder.version.startswith("tree-"), holder
    # The lock is taken before spark-submit's scripts exec the JVM, under the same pid.
    stack.wait_for("the driver JVM", lambda: driver_jvms(stack.checkpoints) == {holder.pid}, timeout=120)
    assert stack.files.supervisor_lock.is_held()
    with stack.warehouse() as connection:
        healthy = wait_until_healthy(stack.files, stack.observe(connection), HealthPolicy(), since=holder.started_at,
                                     timeout=dt.timedelta(minutes=5), checks=2, interval=2)
    TIMINGS["supervisor start to healthy"] = time.monotonic() - stack.supervisor_started
    assert healthy.pid == holder.pid

    second = subprocess.run([sys.executable, driver_lock.__file__, "--lock", str(lock.path), "--version", "intruder",
                             "--", str(VENV_BIN / "spark-submit"), "--version"], capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == LOCK_BUSY_EXIT
    assert f"refusing to start a second driver" in second.stderr and f"held by pid {holder.pid}" in second.stderr
    assert driver_jvms(stack.checkpoints) == {holder.pid}


def test_3_sigkilled_driver_is_back_within_one_watchdog_interval_and_never_doubled(stack):
    lock = stack.files.driver_lock
    victim = lock.holder()
    sampler = DriverSampler(stack)
    sampler.start()
    try:
        killed_at = time.time()
        os.kill(victim.pid, signal.SIGKILL)
        replacement = stack.wait_for("a new driver", lambda: (h := lock.holder()) and h.pid != victim.pid and h,
                                     timeout=WATCHDOG_INTERVAL_SECONDS, interval=0.2)
        add_leads(stack, 1)
        stack.wait_for("the new driver to load the new lead", lambda: stack.count("leads") == 7,
                       timeout=WATCHDOG_INTERVAL_SECONDS)
        back_after = time.time() - killed_at
    finally:
        sampler.stop()
    TIMINGS["SIGKILL to data flowing again"] = back_after
    assert back_after < WATCHDOG_INTERVAL_SECONDS
    sampler.assert_never_two_drivers()
    holders = [h for _, _, h in sampler.samples if h]
    assert holders[0] == victim.pid and holders[-1] == replacement.pid
    assert set(holders) == {victim.pid, replacement.pid}
    assert replacement.started_at.timestamp() >= killed_at, "the new driver took the lock after the kill"
    assert read_exits(stack.files)[-1].cause == "killed by SIGKILL"

    code, output = stack.dags_test("stream_watchdog", name="after-sigkill")
    assert code == 0, output[-5000:]
    assert f"query {stack.query} is healthy" in output


def test_4_stalled_driver_is_detected_and_restarted(stack):
    lock = stack.files.driver_lock
    stalled = lock.holder()
    os.kill(stalled.pid, signal.SIGSTOP)  # alive, holding the lock, doing nothing
    add_leads(stack, 3)
    with stack.warehouse() as connection:
        verdict = stack.wait_for(
            "the job to look stalled",
            lambda: (v := classify_job_health(stack.observe(connection)(), stack.config().health)).state
            is Health.STALLED and v, timeout=2 * (STARTUP_GRACE_SECONDS + STALL_SECONDS))
    assert "messages waiting" in verdict.reason

    code, output = stack.dags_test("stream_watchdog", name="stalled")

    assert code == 0, output[-5000:]
    assert f"query {stack.query} is stalled" in output
    assert "restart requested by watchdog" in output and f"query {stack.query} restarted" in output
    assert process_stat(stalled.pid) is None, "the stalled driver is gone"
    assert lock.holder().pid != stalled.pid
    stack.wait_for("the waiting leads to land", lambda: stack.count("leads") == 10, timeout=120)
    last = [e for e in read_exits(stack.files) if e.pid == stalled.pid][-1]
    assert last.requested_by == "watchdog" and last.failure


def test_5_deploy_passes_both_gates_and_runs_the_new_version(stack):
    version = stack.versions[0]
    before = stack.files.driver_lock.holder()

    code, output = stack.dags_test("stream_deploy", conf={"version": version}, name="v2")

    assert code == 0, output[-5000:]
    assert output.count("data quality PASSED") >= 2
    assert "entity" in output and "elasticsearch" in output and "dead letters" in output  # the report table
    holder = stack.files.driver_lock.holder()
    assert holder.version == version and holder.pid != before.pid
    assert ReleaseStore(stack.config().releases_root).current(stack.query).version == version


def test_6_deploy_is_refused_when_elasticsearch_misses_documents(stack):
    from elasticsearch import Elasticsearch

    es = Elasticsearch(stack.settings.es_url, request_timeout=30)
    index = LEAD.index_name(stack.prefix)
    missing = stack.leads[:2]
    for lead in missing:
        # Deleted at the document's own external version: a plain delete would bump it, and the replay below
        # (same version, external_gte) would then be a version conflict until index.gc_deletes (60 s) passes.
        version = es.get(index=index, id=lead["id"])["_version"]
        es.delete(index=index, id=lead["id"], version=version, version_type="external_gte", refresh=True)
    running = stack.files.driver_lock.holder()

    code, output = stack.dags_test("stream_deploy", conf={"version": stack.versions[1]}, name="refused")

    assert code != 0
    assert (f"deploy of {stack.versions[1]} refused: gate_before: lead: Postgres has 10 rows but Elasticsearch 8 "
            "documents") in output, output[-5000:]
    assert stack.files.driver_lock.holder() == running, "the running driver was not touched"
    assert ReleaseStore(stack.config().releases_root).current(stack.query).version == stack.versions[0]

    produce(stack.settings, stack.topic, missing)  # the job re-upserts them: Elasticsearch whole again
    stack.wait_for("the documents to be back", lambda: es.count(index=index)["count"] == 10, timeout=120)
    es.close()


def test_7_broken_version_is_rolled_back(stack):
    broken = stack.versions[2]
    source = stack.tmp / "broken_source"
    for package in ("spark", "include"):
        shutil.copytree(REPO_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    entry = source / "spark" / "streaming_job.py"
    entry.write_text(entry.read_text().replace("\nfrom include.entities import ENTITIES",
                                               '\nraise RuntimeError("e2e: this build is broken")\n'
                                               "from include.entities import ENTITIES", 1))
    ReleaseStore(stack.config().releases_root).build(broken, source)
    previous = stack.files.driver_lock.holder()

    code, output = stack.dags_test("stream_deploy", conf={"version": broken}, name="broken")

    assert code != 0
    assert f"deploy of {broken} failed: wait_healthy: driver of version {broken} failed: RuntimeError: e2e: this " \
           f"build is broken" in output, output[-5000:]
    assert f"restored {previous.version}" in output
    holder = stack.files.driver_lock.holder()
    assert holder.version == previous.version and holder.pid != previous.pid
    assert ReleaseStore(stack.config().releases_root).current(stack.query).version == previous.version


def test_8_watchdog_fails_on_repeated_failures_naming_the_causes(stack):
    code, output = stack.dags_test("stream_watchdog", name="repeated-failures")

    assert code != 0
    assert f"query {stack.query}: 3 driver failures in the last 0:30:00 (limit 3)" in output, output[-5000:]
    assert "latest cause: RuntimeError: e2e: this build is broken (exit code 1)" in output
    assert "killed by SIGKILL" in output and "restart requested by watchdog: stalled" in output
    assert f"query {stack.query} is healthy" in output, "the job itself is fine again"


def test_9_checkpoint_purge_removes_exactly_the_orphaned_old_folder(stack):
    old = time.time() - 10 * 86400
    orphan_old = stack.checkpoints / "orphan_old"
    (orphan_old / "offsets").mkdir(parents=True)
    (orphan_old / "offsets" / "0").write_bytes(b"x" * 4096)
    (stack.checkpoints / "orphan_recent" / "offsets").mkdir(parents=True)
    outside = stack.tmp / "outside"
    outside.mkdir()
    (outside / "keep.bin").write_bytes(b"k")
    (stack.checkpoints / "elsewhere").symlink_to(outside)
    for path in (orphan_old / "offsets" / "0", orphan_old / "offsets", orphan_old, outside / "keep.bin", outside):
        os.utime(path, (old, old), follow_symlinks=False)
    live = stack.checkpoints / stack.query
    os.utime(live, (old, old))

    code, output = stack.dags_test("checkpoint_purge", conf={"dry_run": False}, name="purge")

    assert code == 0, output[-5000:]
    assert "orphan_old" in output and "4,096 bytes" in output  # the plan, listed before removing
    assert "removed 1 folders, 4,096 bytes freed" in output
    assert sorted(p.name for p in stack.checkpoints.iterdir()) == sorted(
        ["elsewhere", "orphan_recent", stack.query, f"{stack.query}_catchup"])
    assert (outside / "keep.bin").exists() and live.exists()
