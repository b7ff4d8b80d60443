"""Fixtures for tests that run the deployed entry points (Airflow DAGs, the MCP server) as subprocesses.

Those entry points take every name from the settings, so a test hands them databases, a topic, an index prefix
and a checkpoint root of its own through PIPELINE_* variables, and the real `public` objects stay untouched.
Airflow itself runs on a metadata database and home of the tests' own (tests/conftest.py), never the user's."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from include.connections import pg_session
from include.entities import ENTITIES
from include.schema import apply_sql, ensure_index, quote_ident, warehouse_ddl
from include.settings import REPO_ROOT, Settings, load_settings
from stack.services import init_airflow
from stack.standin import standin_ddl
from stack.services import AirflowComponent, airflow_services, pid_alive
from tests.conftest import owned_index_prefix, owned_topic, unique_name

AIRFLOW_INSTANCE = "airflow_instance"
# Counted from the folder, so a new DAG needs no test edit.
DAG_FILES = {path.name for path in (REPO_ROOT / "dags").glob("*.py")}


@contextmanager
def isolated_objects(settings: Settings, es):
    """PIPELINE_* overrides naming a warehouse and a source database (schema applied), a topic, an index prefix
    (indices created) and a checkpoint root, all created here and removed afterwards."""
    databases = {"warehouse": unique_name("test_wh"), "source": unique_name("test_src")}
    with (owned_topic(settings) as topic, owned_index_prefix(es) as prefix,
          pg_session(settings, "postgres", autocommit=True) as admin):
        checkpoints = settings.state_dir / "test-checkpoints" / prefix
        for database in databases.values():
            admin.execute(f"CREATE DATABASE {quote_ident(database)}")
        try:
            for database, ddl in ((databases["warehouse"], warehouse_ddl()), (databases["source"], standin_ddl())):
                with pg_session(settings, database) as connection:
                    apply_sql(connection, ddl)
            for entity in ENTITIES:
                ensure_index(es, entity, index=f"{prefix}_{entity.index}")
            yield {
                "PIPELINE_PG_WAREHOUSE_DB": databases["warehouse"],
                "PIPELINE_PG_SOURCE_DB": databases["source"],
                "PIPELINE_KAFKA_TOPIC": topic,
                "PIPELINE_STREAM_ES_INDEX_PREFIX": prefix,
                "PIPELINE_STREAM_CHECKPOINT_ROOT": str(checkpoints),
                "PYTHONPATH": str(REPO_ROOT),
            }
        finally:
            for database in databases.values():
                admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(database)} WITH (FORCE)")
            shutil.rmtree(checkpoints, ignore_errors=True)


@pytest.fixture
def isolated_stack(settings, es):
    with isolated_objects(settings, es) as overrides:
        yield overrides


@contextmanager
def airflow_metadata_of(settings: Settings):
    """A migrated Airflow metadata database and home for `settings`, dropped and removed afterwards."""
    init_airflow(settings)
    try:
        yield settings
    finally:
        with pg_session(settings, "postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(settings.pg_airflow_db)} WITH (FORCE)")
        shutil.rmtree(settings.resolved_airflow_home, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def airflow_metadata(settings):
    """The tests' Airflow database (named in tests/conftest.py), for every `airflow dags test` of the session."""
    with airflow_metadata_of(settings):
        yield


def stack_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stack", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600, env=env)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class AirflowInstance:
    """Airflow as `make airflow` starts it (API server, scheduler, DAG processor, triggerer), on a metadata
    database, home, port and pipeline objects of its own; talked to through its REST API like the UI does."""

    env: dict
    settings: Settings
    url: str
    password: str
    _token: str = field(default="", repr=False)

    def request(self, method: str, path: str, body: dict | None = None, authenticated: bool = True):
        headers = {"content-type": "application/json"}
        if authenticated:
            if not self._token:
                self._token = self.request("POST", "/auth/token", {"username": "admin", "password": self.password},
                                           authenticated=False)["access_token"]
            headers["authorization"] = f"Bearer {self._token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
        return json.loads(payload) if payload else None  # DELETE answers 204, no body

    def dags(self) -> dict[str, dict]:
        return {dag["dag_id"]: dag for dag in self.request("GET", "/api/v2/dags?limit=100")["dags"]}

    def dag_files(self) -> set[str]:
        """The file names the listed DAGs come from."""
        return {Path(dag["fileloc"]).name for dag in self.dags().values()}

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused})

    def runs(self, dag_id: str) -> list[dict]:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]

    def trigger(self, dag_id: str, conf: dict) -> str:
        """A manual run with `conf` as its params, as the UI's trigger form posts it."""
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})[
            "dag_run_id"]

    def fail_run(self, dag_id: str, run_id: str) -> None:
        """Mark a run failed: Airflow stops its running tasks (their on_kill runs)."""
        self.request("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", {"state": "failed"})

    def return_value(self, dag_id: str, run_id: str, task_id: str):
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/"
                                   "return_value")["value"]

    def wait_for(self, what: str, probe, timeout: float, interval: float = 3.0):
        """The first truthy result of `probe()`; on time-out the failure names what was awaited and shows the
        tail of the scheduler's log."""
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result:
                return result
            if time.monotonic() > deadline:
                scheduler_log = AirflowComponent(self.settings, "scheduler").log_path
                tail = scheduler_log.read_text(errors="replace")[-3000:] if scheduler_log.exists() else ""
                raise AssertionError(f"{what}: not within {timeout:.0f} s; scheduler log tail:\n{tail}")
            time.sleep(interval)


@pytest.fixture(scope="session")
def airflow_instance(settings, tmp_path_factory):
    """One Airflow for every UI, scheduler and browser test (tests using it run last, so it stops right after
    them): started with `python -m stack airflow-ui` as `make airflow` does, with extraction every minute and
    the watchdog every minute; stopped by pid, its database and pipeline objects removed."""
    from elasticsearch import Elasticsearch

    es = Elasticsearch(settings.es_url, request_timeout=30)
    with isolated_objects(settings, es) as objects:
        env = {**os.environ, **objects,
               "PIPELINE_PG_AIRFLOW_DB": unique_name("test_airflow_ui"),
               "PIPELINE_AIRFLOW_HOME": str(tmp_path_factory.mktemp("airflow-home")),
               "PIPELINE_AIRFLOW_API_PORT": str(_free_port()),
               "PIPELINE_EXTRACT_SCHEDULE": "* * * * *",
               "PIPELINE_WATCHDOG_INTERVAL_MINUTES": "1"}
        instance_settings = load_settings(env)
        with airflow_metadata_of(instance_settings):
            started = stack_cli(env, "airflow-ui")
            try:
                login = re.search(r"Airflow UI: (http://\S+)\s+\(login: admin / (\S+)\)", started.stdout)
                assert started.returncode == 0 and login, started.stdout + started.stderr
                instance = AirflowInstance(env, instance_settings, *login.groups())
                # On a fresh metadata database the DAG processor needs a moment to parse the folder.
                instance.wait_for("every DAG file parsed", lambda: instance.dag_files() == DAG_FILES, timeout=180)
                yield instance
            finally:
                pids = [component.recorded_pid() for component in airflow_services(instance_settings)]
                stopped = stack_cli(env, "airflow-down")
                assert stopped.returncode == 0, stopped.stderr
                assert not any(pid_alive(pid) for pid in pids), pids
    es.close()


def pytest_collection_modifyitems(config, items):
    # The tests sharing one Airflow run last, so that it stops (session teardown) as soon as they are done; the UI's
    # first, as it checks what a user finds (every DAG unpaused) before the others pause what they started.
    order = {"test_airflow_ui.py": 0, "test_airflow_scheduler.py": 1, "test_airflow_browser.py": 2}
    items.sort(key=lambda item: (AIRFLOW_INSTANCE in item.fixturenames, order.get(Path(str(item.fspath)).name, 0)))
