"""Memory of the processes under test, read from /proc, and the heap of a JVM, read with jstat.

A process's memory here is that of its whole tree (Postgres is a postmaster and its backends; the Spark driver is
Python, its JVM and Python workers): RSS summed over the tree (shared pages counted once per process, so an upper
bound) and PSS summed over the tree (shared pages split between their users: what the tree really costs).
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from include.settings import Settings



def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the process exited between listing and reading
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def process_tree(pid: int) -> list[int]:
    children = _children()
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, []))
    return tree


def _kib(path: Path, field: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB summed over the process and its descendants; (0, 0) once it has exited."""
    rss = pss = 0
    for member in process_tree(pid):
        try:
            rss += _kib(Path(f"/proc/{member}/status"), "VmRSS:")
            pss += _kib(Path(f"/proc/{member}/smaps_rollup"), "Pss:")
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while being read: it holds no memory any more
    return rss / 1024, pss / 1024


# The Spark driver JVM's main class. spark-submit first runs a short-lived launcher JVM that builds the command
# line (it names SparkSubmit among its arguments too), which must not be taken for the driver.
SPARK_DRIVER_MAIN = "org.apache.spark.deploy.SparkSubmit"
SPARK_LAUNCHER_MAIN = "org.apache.spark.launcher.Main"


def find_java(pid: int, main_class: str = SPARK_DRIVER_MAIN) -> int | None:
    """The JVM running `main_class` in a process tree (pyspark starts the driver JVM under the Python process)."""
    for member in process_tree(pid):
        try:
            arguments = Path(f"/proc/{member}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if (Path(arguments[0].decode(errors="replace")).name == "java" and main_class.encode() in arguments
                and SPARK_LAUNCHER_MAIN.encode() not in arguments):
            return member
    return None


@dataclass
class Peak:
    pid: int
    rss_mb: float = 0.0
    pss_mb: float = 0.0
    samples: int = 0

    def as_dict(self) -> dict:
        return {"pid": self.pid, "peak_rss_mb": round(self.rss_mb, 1), "peak_pss_mb": round(self.pss_mb, 1),
                "samples": self.samples}


class Monitor:
    """Samples every watched process tree each `interval` seconds in a thread; keeps each one's peak."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.peaks: dict[str, Peak] = {}
        self._watched: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)

    def watch(self, name: str, pid: int | None) -> None:
        if pid is None:
            raise ValueError(f"no pid to watch for {name}: is the service running?")
        with self._lock:
            self._watched[name] = pid
            self.peaks.setdefault(name, Peak(pid))
        self._sample(name, pid)

    def unwatch(self, name: str) -> None:
        with self._lock:
            self._watched.pop(name, None)

    def _sample(self, name: str, pid: int) -> None:
        rss, pss = tree_memory_mb(pid)
        with self._lock:
            peak = self.peaks[name]
            peak.rss_mb, peak.pss_mb = max(peak.rss_mb, rss), max(peak.pss_mb, pss)
            peak.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                watched = list(self._watched.items())
            for name, pid in watched:
                self._sample(name, pid)

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> dict[str, dict]:
        self._stop.set()
        self._thread.join()
        return {name: peak.as_dict() for name, peak in self.peaks.items()}


def watch_services(monitor: Monitor, settings: Settings) -> None:
    from stack.services import Elasticsearch, Kafka, Postgres

    for service in (Postgres(settings), Kafka(settings), Elasticsearch(settings)):
        monitor.watch(service.name, service.recorded_pid())


class HeapSampler:
    """Heap use of a JVM from `jstat -gc` every `interval_ms`: peak used and peak committed, in MB.

    jstat cannot attach until the JVM has published its performance data, a moment after it starts: until then it
    exits with an error, and is started again while the JVM lives."""

    # jstat -gc columns whose sum is the heap in use / committed (survivors, eden, old generation).
    USED = ("S0U", "S1U", "EU", "OU")
    COMMITTED = ("S0C", "S1C", "EC", "OC")

    def __init__(self, pid: int, interval_ms: int = 250):
        from stack.services import java_home, pid_alive

        self.pid = pid
        self.command = [str(java_home() / "bin" / "jstat"), "-gc", str(pid), str(interval_ms)]
        self._alive = pid_alive
        self.peak_used_mb = 0.0
        self.peak_committed_mb = 0.0
        self.samples = 0
        self.last_message = ""
        self._process: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="bench-jstat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self._alive(self.pid):
            with self._lock:
                if self._stop.is_set():
                    return
                self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 text=True)
            self._read(self._process)
            self._process.wait()
            self._stop.wait(0.5)

    def _read(self, process: subprocess.Popen) -> None:
        header: list[str] | None = None
        for line in process.stdout:
            columns = line.split()
            if not columns:
                continue
            if columns[0] == "S0C":
                header = columns
                continue
            if header is None or len(columns) != len(header):
                self.last_message = line.strip()  # jstat's complaint (no such JVM, cannot attach yet)
                continue
            values = dict(zip(header, columns))
            used = sum(float(values[c]) for c in self.USED) / 1024
            committed = sum(float(values[c]) for c in self.COMMITTED) / 1024
            self.peak_used_mb = max(self.peak_used_mb, used)
            self.peak_committed_mb = max(self.peak_committed_mb, committed)
            self.samples += 1

    def stop(self) -> dict:
        with self._lock:
            self._stop.set()
            if self._process is not None and self._process.poll() is None:
                self._process.terminate()
        self._thread.join(timeout=10)
        if not self.samples:
            raise RuntimeError(f"jstat read no heap sample from pid {self.pid}: {self.last_message}")
        return {"pid": self.pid, "peak_heap_used_mb": round(self.peak_used_mb, 1),
                "peak_heap_committed_mb": round(self.peak_committed_mb, 1), "samples": self.samples}


def wait_for_java(pid: int, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        java = find_java(pid)
        if java is not None:
            return java
        time.sleep(0.2)
    raise RuntimeError(f"no JVM appeared under pid {pid} within {timeout_s:.0f} s")
