"""Runs a Spark driver (the streaming job, or the naive writer) as its own process, as it is shipped: a separate
Python process with its own JVM, started by pid, watched for memory and heap, and stopped by pid."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.monitor import HeapSampler, Monitor, wait_for_java
from include.settings import REPO_ROOT

log = logging.getLogger(__name__)


def child_environment() -> dict[str, str]:
    # Spark's Python workers must run the same interpreter (the venv) and import the repo's packages.
    return {**os.environ, "PYSPARK_PYTHON": sys.executable,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))}


class Driver:
    """One driver process: `python -m <module> <args>`, its output in `log_path`."""

    def __init__(self, label: str, module: str, args: list[str], log_path: Path, monitor: Monitor | None = None,
                 heap: bool = False, env: dict[str, str] | None = None):
        self.label = label
        self.log_path = log_path
        self.started = time.perf_counter()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as output:
            self.process = subprocess.Popen([sys.executable, "-m", module, *args], stdout=output,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
                                            env={**child_environment(), **(env or {})}, start_new_session=True)
        self.java_pid: int | None = None
        self.heap: HeapSampler | None = None
        self.monitor = monitor
        if monitor is not None:
            monitor.watch(f"spark-driver ({label})", self.process.pid)
        if heap:
            try:
                self.java_pid = wait_for_java(self.process.pid)
            except RuntimeError:
                self.stop()
                self.finish()
                raise
            self.heap = HeapSampler(self.java_pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return "\n".join(text[-lines:])

    def wait(self, timeout_s: float) -> float:
        """Wait for a clean exit; returns the seconds since launch. A failure or a timeout raises with the log."""
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"{self.label}: still running after {timeout_s:.0f} s, stopped "
                               f"(log {self.log_path}):\n{self.tail()}") from None
        except BaseException:  # interrupted (Ctrl-C): the driver must not outlive the benchmark
            self.stop()
            raise
        seconds = time.perf_counter() - self.started
        if code != 0:
            raise RuntimeError(f"{self.label}: exited with {code} (log {self.log_path}):\n{self.tail()}")
        return seconds

    def stop(self, grace_s: float = 60) -> int | None:
        """SIGTERM to the process group this driver leads (Python, its JVM, Spark's Python workers), by pid."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %s) ignored SIGTERM for %.0f s; killing it", self.label, self.pid, grace_s)
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def finish(self) -> dict:
        """Stop sampling; the driver's heap peaks (when sampled)."""
        if self.monitor is not None:
            self.monitor.unwatch(f"spark-driver ({self.label})")
        return self.heap.stop() if self.heap is not None else {}
