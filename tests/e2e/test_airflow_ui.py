"""`make airflow`: the UI, scheduler, DAG processor and triggerer come up healthy, the printed login works and
the project's DAGs are listed; `airflow-down` stops exactly those processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request

from include.settings import REPO_ROOT
from stack.services import airflow_services, pid_alive


def _stack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stack", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)


def _request(url: str, data: dict | None = None, token: str | None = None) -> dict:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    body = json.dumps(data).encode() if data is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=10) as response:
        return json.load(response)


def test_airflow_ui_starts_lists_dags_and_stops(settings):
    components = airflow_services(settings)
    already_running = all(c.running() for c in components)
    started = _stack("airflow-ui")
    assert started.returncode == 0, started.stdout + started.stderr
    match = re.search(r"Airflow UI: (http://\S+)\s+\(login: admin / (\S+)\)", started.stdout)
    assert match, started.stdout
    url, password = match.groups()
    try:
        health = _request(f"{url}/api/v2/monitor/health")
        assert {part: state["status"] for part, state in health.items()} == {
            "metadatabase": "healthy", "scheduler": "healthy", "triggerer": "healthy", "dag_processor": "healthy"}
        token = _request(f"{url}/auth/token", {"username": "admin", "password": password})["access_token"]
        # On a fresh metadata database the DAG processor needs a moment to parse the folder.
        deadline = time.monotonic() + 60
        while True:
            dag_ids = {dag["dag_id"] for dag in _request(f"{url}/api/v2/dags?limit=100", token=token)["dags"]}
            if "warehouse_schema" in dag_ids or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert "warehouse_schema" in dag_ids
    finally:
        if not already_running:
            pids = [c.recorded_pid() for c in components]
            stopped = _stack("airflow-down")
            assert stopped.returncode == 0, stopped.stderr
            assert not any(pid_alive(pid) for pid in pids)
