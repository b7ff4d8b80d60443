"""`python -m stack` on the running stack: `up` again is a no-op that leaves the same processes running."""

from __future__ import annotations

import subprocess
import sys

from include.settings import REPO_ROOT


def _stack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stack", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)


def _pids(status_output: str) -> dict[str, str]:
    rows = [line.split() for line in status_output.splitlines()[1:] if line and not line.startswith("total")]
    return {row[0]: row[3] for row in rows}


def test_up_is_idempotent_and_status_reports_every_service():
    before = _stack("status")
    assert before.returncode == 0, before.stdout + before.stderr
    again = _stack("up", "--no-airflow")
    assert again.returncode == 0, again.stdout + again.stderr
    after = _stack("status")
    services = set(_pids(after.stdout))
    base = {"postgres", "kafka", "elasticsearch", "spark"}
    # The local Spark cluster is listed too when it was started (`up --spark-cluster`) or is configured.
    assert base <= services and all(s == "spark-master" or s.startswith("spark-worker-") for s in services - base)
    assert _pids(after.stdout) == _pids(before.stdout), "a second `up` must not restart anything"
    assert all(line.split()[1] == "healthy" for line in after.stdout.splitlines()[1:] if not line.startswith("total"))
