"""The streaming job on the local Spark standalone cluster, submitted the production way, with an executor killed.

`airflow dags test stream_supervisor` (available-now) submits a release through the supervisor's
SparkSubmitOperator to spark://127.0.0.1:<PIPELINE_SPARK_MASTER_PORT> in client mode: the driver runs here, its
executors in the two workers' JVMs, importing the job from the release's --py-files zip and COPYing into Postgres
themselves. Mid-run, one worker's executor JVM is SIGKILLed while it runs a task: Spark retries its tasks on the
other worker, which is the retried-task path of the staging COPY (spark/sinks/postgres.py) that local mode never
takes. The test starts the cluster's master and workers if they are not running, and stops only those it started.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from include.connections import warehouse_session
from include.contract import MAX_PAYLOAD_BYTES
from include.entities import ENTITIES
from include.orchestration.releases import ReleaseStore
from include.schema import quote_ident
from include.settings import REPO_ROOT
from include.orchestration.config import StreamOpsConfig
from spark.validation import INVALID_JSON
from stack.services import SparkMaster, SparkWorker, StackError, pid_alive, wait_until as wait_healthy
from tests.e2e.test_streaming_job import BUILDERS, Target, es_documents, wait_until
from tests.stream_support import external_version, nth_order, produce

pytestmark = pytest.mark.timeout(900)

VENV_BIN = Path(sys.executable).parent
IDS = 50_000  # two versions each: 100,000 messages
POISON = 20
BATCH = 12_500
EXECUTOR_MAIN = "org.apache.spark.executor.CoarseGrainedExecutorBackend"


@pytest.fixture(scope="module")
def cluster():
    """The local cluster's master and first two workers, healthy; those this fixture started are stopped after."""
    from include.settings import load_settings

    settings = load_settings()
    daemons = [SparkMaster(settings), SparkWorker(settings, 0), SparkWorker(settings, 1)]
    started = [daemon for daemon in daemons if not daemon.health().healthy]
    try:
        for daemon in started:
            if daemon.running():
                raise StackError(f"{daemon.name} (pid {daemon.recorded_pid()}) runs but is not healthy: "
                                 f"{daemon.health().detail}")
            daemon.start()
        for daemon in daemons:
            wait_healthy(lambda d=daemon: d.health().healthy, 120, daemon.name, daemon.log_path)
        yield daemons
    finally:
        for daemon in reversed(started):
            daemon.stop()


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # the task ended while we listed it
            continue
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


def executor_of(worker: SparkWorker) -> tuple[int, Path] | None:
    """(pid, work folder) of the executor JVM the worker runs now: its child process, whose working directory is
    <work dir>/<application id>/<executor id>."""
    for pid in children(worker.recorded_pid()):
        if EXECUTOR_MAIN in cmdline(pid):
            try:
                return pid, Path(os.readlink(f"/proc/{pid}/cwd"))
            except FileNotFoundError:
                continue
    return None


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except FileNotFoundError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def running_python_task(executor_pid: int) -> bool:
    """A Python worker of the executor burns CPU: a task of the stage (validate, render, COPY) runs. Workers are
    reused between tasks, so their mere existence says nothing."""
    workers = [worker for daemon in children(executor_pid) if "pyspark.daemon" in cmdline(daemon)
               for worker in children(daemon)]
    before = {worker: cpu_ticks(worker) for worker in workers}
    time.sleep(0.2)
    return any(cpu_ticks(worker) > ticks for worker, ticks in before.items())


def patched_release(tmp: Path, releases_root: Path, query: str, marker: str) -> str:
    """A release of this checkout whose validator names invalid JSON `<invalid_json>_<marker>`: a dead letter with
    that reason can only come from an executor that imported the release, not the checkout."""
    source = tmp / "release-source"
    for package in ("spark", "include"):
        shutil.copytree(REPO_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    validation = source / "spark" / "validation.py"
    original = f'INVALID_JSON = "{INVALID_JSON}"'
    assert original in validation.read_text()
    validation.write_text(validation.read_text().replace(original, f'INVALID_JSON = "{INVALID_JSON}_{marker}"'))
    store = ReleaseStore(releases_root)
    version = f"e2e-cluster-{marker}"
    store.build(version, source)
    store.promote(query, version)
    return version


def task_ends(events: Path, application: str) -> list[dict]:
    """The application's task-end events from its event log (Spark 4's rolling format: a folder of event files)."""
    folder = events / f"eventlog_v2_{application}"
    lines = [line for path in sorted(folder.glob("events_*")) for line in path.read_text().splitlines()]
    return [event for event in map(json.loads, lines) if event["Event"] == "SparkListenerTaskEnd"]


def test_executor_killed_mid_batch_tasks_retried_on_the_other_worker_result_exact(settings, cluster, es, pg_schema,
                                                                                  es_prefix, kafka_topic, tmp_path):
    marker = uuid.uuid4().hex[:8]
    query = f"e2e_cluster_{marker}"
    checkpoints = tmp_path / "checkpoints"
    events = tmp_path / "events"
    events.mkdir()
    conf_dir = tmp_path / "spark-conf"
    conf_dir.mkdir()
    # The supervisor's spark-submit reads SPARK_CONF_DIR: the event log tells where each task attempt ran.
    (conf_dir / "spark-defaults.conf").write_text(f"spark.eventLog.enabled true\nspark.eventLog.dir file:{events}\n"
                                                   "spark.eventLog.compress false\n")
    env = {
        "PIPELINE_SPARK_MASTER": settings.spark_cluster_url,
        "PIPELINE_SPARK_DRIVER_MEMORY": "1g",
        "PIPELINE_KAFKA_TOPIC": kafka_topic,
        "PIPELINE_STREAM_CHECKPOINT_ROOT": str(checkpoints),
        "PIPELINE_STREAM_QUERY_NAME": query,
        "PIPELINE_STREAM_PG_SCHEMA": pg_schema,
        "PIPELINE_STREAM_ES_INDEX_PREFIX": es_prefix,
        # Small messages: batches of 12,500 (the default budget allows 2,048, sized for 256 KB messages).
        "PIPELINE_STREAM_MAX_BYTES_PER_TRIGGER": str(BATCH * MAX_PAYLOAD_BYTES),
        "SPARK_CONF_DIR": str(conf_dir),
    }
    ops = StreamOpsConfig.load({**os.environ, **env})
    version = patched_release(tmp_path, ops.releases_root, query, marker)
    try:
        run_on_cluster(settings, cluster, es, pg_schema, es_prefix, kafka_topic, tmp_path, env, query, marker, version)
    finally:  # releases are immutable and kept; this one was the test's own
        shutil.rmtree(ops.releases_root / version)
        (ops.releases_root / f"{query}.current").unlink()


def run_on_cluster(settings, cluster, es, pg_schema, es_prefix, kafka_topic, tmp_path, env, query, marker, version):
    _, first_worker, second_worker = cluster
    checkpoints = tmp_path / "checkpoints"
    events = tmp_path / "events"

    messages = []
    newest: dict[str, dict] = {e.name: {} for e in ENTITIES}
    for number in range(IDS):
        entity = ENTITIES[number % len(ENTITIES)]
        record_id = str(uuid.uuid4())
        messages += [BUILDERS[entity](id=record_id, **{entity.order_column: nth_order(entity, v)}) for v in range(2)]
        newest[entity.name][record_id] = nth_order(entity, 1)
    random.Random(16).shuffle(messages)
    positions = produce(settings, kafka_topic, messages + [f"not json {n}" for n in range(POISON)])
    poison_positions = set(positions[-POISON:])
    end_offsets: dict[str, int] = {}
    for partition, offset in positions:
        end_offsets[str(partition)] = max(end_offsets.get(str(partition), 0), offset + 1)

    db = warehouse_session(settings, pg_schema, autocommit=True)
    log_path = tmp_path / "supervisor.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        supervisor = subprocess.Popen(
            [str(VENV_BIN / "airflow"), "dags", "test", "stream_supervisor", "-c", json.dumps({"trigger": "available-now"})],
            env={**os.environ, **settings.airflow_environment(), **env,
                 "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def batches() -> int:
            return db.execute("SELECT count(*) FROM stream_heartbeats WHERE query_name = %s", [query]).fetchone()[0]

        # Past the start (executors up, a few batches committed), then inside a batch's stage on the first worker.
        wait_until(lambda: batches() >= 3 or supervisor.poll() is not None, timeout=300, what="3 committed batches")
        assert supervisor.poll() is None, log_path.read_text()[-5000:]
        victim_pid, victim_folder = wait_until(
            lambda: (found := executor_of(first_worker)) and running_python_task(found[0]) and found,
            timeout=120, what="a task running on the first worker's executor", interval=0.05)
        os.kill(victim_pid, signal.SIGKILL)
        killed_after_batches = batches()
        assert supervisor.wait(timeout=600) == 0, log_path.read_text()[-5000:]
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()
    seconds = time.monotonic() - started
    assert not pid_alive(victim_pid)
    assert killed_after_batches < batches(), "the kill landed after the last batch"

    # Where the task attempts ran: executors are known by their work folders under each worker.
    application = victim_folder.parent.name
    on_worker = {worker.name: {p.name for p in (worker.work_dir / application).iterdir()}
                 for worker in (first_worker, second_worker)}
    victim = victim_folder.name
    ends = task_ends(events, application)
    lost = [e for e in ends if e["Task End Reason"]["Reason"] == "ExecutorLostFailure"]
    assert lost and {e["Task Info"]["Executor ID"] for e in lost} == {victim}, lost
    for failure in lost:
        retries = [e for e in ends if e["Task End Reason"]["Reason"] == "Success"
                   and (e["Stage ID"], e["Stage Attempt ID"], e["Task Info"]["Index"])
                   == (failure["Stage ID"], failure["Stage Attempt ID"], failure["Task Info"]["Index"])
                   and e["Task Info"]["Attempt"] > failure["Task Info"]["Attempt"]]
        assert len(retries) == 1, (failure, retries)
        assert retries[0]["Task Info"]["Executor ID"] in on_worker[second_worker.name], (retries, on_worker)
    assert victim in on_worker[first_worker.name]

    # The result is exact: every offset read once, every id at its newest version in both sinks, each poison
    # message one dead letter with the release's reason, nothing left in staging.
    input_rows, latest = db.execute(
        "SELECT sum(input_rows), (array_agg(latest_offsets ORDER BY batch_id DESC))[1] FROM stream_heartbeats "
        "WHERE query_name = %s", [query]).fetchone()
    assert input_rows == 2 * IDS + POISON
    assert latest == {kafka_topic: end_offsets}
    for entity in ENTITIES:
        rows = dict(db.execute(f"SELECT {quote_ident(entity.key)}::text, {quote_ident(entity.order_column)} "
                               f"FROM {quote_ident(entity.table)}").fetchall())
        assert rows == newest[entity.name]
        documents = es_documents(es, Target(kafka_topic, pg_schema, es_prefix, checkpoints, query), entity)
        assert {i: d["version"] for i, d in documents.items()} == {i: external_version(v) for i, v in rows.items()}
    dead = db.execute("SELECT kafka_partition, kafka_offset, reason FROM dead_letters").fetchall()
    assert {(p, o) for p, o, _ in dead} == poison_positions and len(dead) == POISON
    assert {reason for _, _, reason in dead} == {f"{INVALID_JSON}_{marker}"}
    assert db.execute("SELECT count(*) FROM stream_stage").fetchone()[0] == 0
    db.close()
    print(f"cluster run of release {version}: {seconds:.0f} s, executor {victim} killed after "
          f"{killed_after_batches} batches, {len(lost)} task(s) retried on {second_worker.name}")
