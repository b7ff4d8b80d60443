"""What the supervisor, the watchdog and the deploy DAG share about one streaming query.

Everything lives in `<checkpoint>/_supervisor/` next to Spark's own checkpoint files (Spark ignores the folder),
so it is removed with the checkpoint and nowhere else: the driver lock, the supervisor lock (held by the Airflow
task that owns the driver), the history of driver exits, the last restart request, and each driver's log.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from include.orchestration.driver_lock import LOCK_BUSY_EXIT, DriverLock


@dataclass(frozen=True)
class QueryFiles:
    checkpoint: Path

    @property
    def folder(self) -> Path:
        return self.checkpoint / "_supervisor"

    @property
    def driver_lock(self) -> DriverLock:
        return DriverLock(self.folder / "driver.lock")

    @property
    def supervisor_lock(self) -> DriverLock:
        return DriverLock(self.folder / "supervisor.lock")

    @property
    def history(self) -> Path:
        return self.folder / "history.jsonl"

    @property
    def restart_request(self) -> Path:
        return self.folder / "restart_request.json"

    @property
    def logs(self) -> Path:
        return self.folder / "logs"


@dataclass(frozen=True)
class DriverExit:
    version: str
    pid: int | None
    started_at: dt.datetime
    ended_at: dt.datetime
    exit_code: int | None
    cause: str
    # Whether it counts towards "repeated failure": an unrequested end of a query meant to run on, or a
    # restart the watchdog forced; not a deploy's stop or an available-now run that finished.
    failure: bool
    # Who asked for this stop (deploy, watchdog, on_kill), None when the driver ended on its own.
    requested_by: str | None = None
    # The driver's log file (spark-submit's output), where the cause came from.
    log: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["ended_at"] = self.ended_at.isoformat()
        return json.dumps(data)

    @classmethod
    def from_json(cls, line: str) -> DriverExit:
        data = json.loads(line)
        data["started_at"] = dt.datetime.fromisoformat(data["started_at"])
        data["ended_at"] = dt.datetime.fromisoformat(data["ended_at"])
        return cls(**data)


def append_exit(files: QueryFiles, driver_exit: DriverExit) -> None:
    files.folder.mkdir(parents=True, exist_ok=True)
    with files.history.open("a") as handle:
        handle.write(driver_exit.to_json() + "\n")


def read_exits(files: QueryFiles) -> list[DriverExit]:
    if not files.history.exists():
        return []
    return [DriverExit.from_json(line) for line in files.history.read_text().splitlines() if line.strip()]


def failures_within(exits: Iterable[DriverExit], now: dt.datetime, window: dt.timedelta) -> list[DriverExit]:
    return [e for e in exits if e.failure and now - e.ended_at <= window]


def backoff_seconds(recent_failures: int, base: float, cap: float) -> float:
    """0 before the first failure, then base, 2*base, 4*base ... capped."""
    if recent_failures <= 0:
        return 0.0
    return min(cap, base * 2 ** (recent_failures - 1))


@dataclass(frozen=True)
class RestartRequest:
    requested_by: str
    reason: str
    # A forced restart (the watchdog's) counts as a driver failure; a deploy's does not.
    failure: bool
    at: dt.datetime
    # A deploy trying a new version: if the first driver after this request crashes, the supervisor waits for
    # the deploy's decision (a restore) instead of resubmitting the broken version.
    trial: bool = False


def request_restart(files: QueryFiles, requested_by: str, reason: str, failure: bool,
                    trial: bool = False) -> RestartRequest:
    """Record that the next driver exit is intended, before signalling the driver. The supervisor reads it to
    classify the exit and to resubmit at once instead of backing off."""
    request = RestartRequest(requested_by, reason, failure, dt.datetime.now(dt.timezone.utc), trial)
    files.folder.mkdir(parents=True, exist_ok=True)
    temporary = files.restart_request.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(request) | {"at": request.at.isoformat()}))
    os.replace(temporary, files.restart_request)
    return request


def latest_restart_request(files: QueryFiles) -> RestartRequest | None:
    try:
        data = json.loads(files.restart_request.read_text())
    except FileNotFoundError:
        return None
    return RestartRequest(**(data | {"at": dt.datetime.fromisoformat(data["at"])}))


def restart_requested_since(files: QueryFiles, moment: dt.datetime) -> RestartRequest | None:
    """The latest restart request if it was made at or after `moment`."""
    request = latest_restart_request(files)
    return request if request and request.at >= moment else None


def is_trial_crash(driver_exit: DriverExit, request: RestartRequest | None, exits: Iterable[DriverExit]) -> bool:
    """Whether `driver_exit` is a crash of the first driver started after a deploy's trial request."""
    if request is None or not request.trial or not driver_exit.failure or driver_exit.requested_by:
        return False
    if driver_exit.started_at < request.at:
        return False
    return not any(request.at <= e.started_at < driver_exit.started_at for e in exits)


# Last line of a Python traceback, e.g. "pyspark.errors...StreamingQueryException: [STREAM_FAILED] ...".
_PYTHON_ERROR = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)(?::\s.*)?$")
# A JVM exception line, with or without the "Exception in thread" prefix.
_JAVA_ERROR = re.compile(r'^(?:Exception in thread "[^"]*" )?(?:[a-z_$][\w$]*\.)+[A-Z][\w$]*(?:Exception|Error)\b.*$')
_LOG_ERROR = re.compile(r"\bERROR\b")


def describe_exit(exit_code: int | None) -> str:
    if exit_code is None:
        return "exit status unknown"
    if exit_code == LOCK_BUSY_EXIT:
        return f"exit code {exit_code}: another driver holds the checkpoint lock"
    if exit_code < 0:
        return f"killed by {signal.Signals(-exit_code).name}"
    if exit_code > 128 and exit_code - 128 in signal.Signals._value2member_map_:
        return f"exit code {exit_code} ({signal.Signals(exit_code - 128).name})"
    return f"exit code {exit_code}"


def failure_cause(lines: Sequence[str], exit_code: int | None, limit: int = 400) -> str:
    """The most telling line of a driver's log: the last Python exception, else the last JVM exception, else the
    last ERROR line; always with how the process ended."""
    stripped = [line.strip() for line in lines if line.strip()]
    traceback_seen = any(line.startswith("Traceback (most recent call last)") for line in stripped)
    for pattern in ([_PYTHON_ERROR] if traceback_seen else []) + [_JAVA_ERROR, _LOG_ERROR]:
        matches = [line for line in stripped if pattern.search(line)]
        if matches:
            detail = matches[-1]
            if len(detail) > limit:
                detail = detail[:limit] + "…"
            return f"{detail} ({describe_exit(exit_code)})"
    return describe_exit(exit_code)


def judge_exit(exit_code: int | None, *, available_now: bool, killed: bool, request: RestartRequest | None,
               output: Sequence[str]) -> tuple[str, bool]:
    """Why a driver ended and whether that counts as a failure, from its exit code, what was asked of it and
    its output."""
    if exit_code == 0 and available_now:
        return "finished: no more data", False
    if killed:
        return f"stopped by on_kill ({failure_cause(output, exit_code)})", False
    if request:
        return f"restart requested by {request.requested_by}: {request.reason}", request.failure
    if exit_code == 0:
        return "exit code 0, though a processing-time query runs until stopped", True
    return failure_cause(output, exit_code), True
