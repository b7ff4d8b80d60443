"""Stopping a driver and whatever it left behind, identified through the driver lock's record.

The driver leads a session of its own (see driver_lock), so its Python process and PySpark's daemon and workers
share its session id. Processes are matched by session *and* start time, so a later process that happens to
reuse a pid is never signalled.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from include.orchestration.driver_lock import DriverLock, Holder, process_stat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StopOutcome:
    pid: int | None
    # the strongest signal that was needed, None when nothing was running
    signal: str | None
    leftovers_killed: tuple[int, ...]


def session_members(holder: Holder) -> list[int]:
    """Live processes in the holder's session that started no earlier than the holder did."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = process_stat(int(entry.name))
        if stat and stat[0] == holder.pid and stat[1] >= holder.process_start:
            members.append(int(entry.name))
    return sorted(members)


def is_alive(holder: Holder) -> bool:
    stat = process_stat(holder.pid)
    return stat is not None and stat[1] == holder.process_start


def _signal_all(pids, sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_until(condition, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def stop_driver(lock: DriverLock, grace: float = 30.0, force: bool = False) -> StopOutcome:
    """Stop the driver holding `lock` (SIGTERM to its session, SIGKILL after `grace` s; SIGKILL at once with
    `force`) and kill what it left.

    Safe to call when nothing runs: it then only kills leftovers of the last driver. Returns once that driver
    process is gone (its lock with it; a supervisor may take the lock again at once for a new driver)."""
    holder = lock.holder()
    used = None
    if holder is not None and not force:
        log.info("stopping driver %s", holder.describe())
        # SIGCONT first: a stopped (SIGSTOP) process would not act on SIGTERM until resumed.
        _signal_all(session_members(holder), signal.SIGCONT)
        _signal_all(session_members(holder), signal.SIGTERM)
        used = "SIGTERM"
    if holder is not None:
        if force or not _wait_until(lambda: not is_alive(holder), grace):
            log.warning("driver pid %s: SIGKILL (%s)", holder.pid,
                        "forced" if force else f"still running {grace:.0f} s after SIGTERM")
            _signal_all(session_members(holder), signal.SIGKILL)
            used = "SIGKILL"
            if not _wait_until(lambda: not is_alive(holder), 30):
                raise RuntimeError(f"driver {holder.describe()} survived SIGKILL")
    last = holder or lock.last_holder()
    leftovers: tuple[int, ...] = ()
    if last is not None and not is_alive(last):
        leftovers = tuple(session_members(last))
        for pid in leftovers:
            log.warning("killing leftover process %s of driver pid %s", pid, last.pid)
        _signal_all(leftovers, signal.SIGKILL)
        _wait_until(lambda: not session_members(last), 10)
    return StopOutcome(holder.pid if holder else None, used, leftovers)
