"""The driver lock: at most one streaming driver per checkpoint, enforced by the kernel.

The lock is an exclusive `flock` on `<checkpoint>/_supervisor/driver.lock`. It is taken by a wrapper that then
`exec`s `spark-submit` with the locked descriptor inherited, so the lock belongs to the driver JVM itself (the
process that writes the checkpoint): it lives exactly as long as that process and the kernel drops it when the
process dies, SIGKILL included. A second wrapper on the same checkpoint exits with LOCK_BUSY_EXIT before
starting anything. The wrapper also makes the driver a session leader, so everything it spawns (the Python
driver, PySpark's daemon and workers, which make process groups of their own) shares its session and can be
stopped together.

Standard library only: it runs as a script (`python driver_lock.py --lock PATH --version V -- spark-submit ...`)
ahead of the job's own Python path.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_BUSY_EXIT = 75  # EX_TEMPFAIL: another driver holds the checkpoint


class LockBusy(RuntimeError):
    """Another process holds the lock."""


@dataclass(frozen=True)
class Holder:
    pid: int
    version: str
    started_at: dt.datetime
    # The process's start time in clock ticks since boot (/proc/<pid>/stat), telling it apart from a later
    # process that reuses the pid.
    process_start: int

    @classmethod
    def parse(cls, text: str) -> Holder:
        data = json.loads(text)
        return cls(int(data["pid"]), str(data["version"]), dt.datetime.fromisoformat(data["started_at"]),
                   int(data["process_start"]))

    def describe(self) -> str:
        return f"pid {self.pid} (version {self.version}, since {self.started_at.isoformat(timespec='seconds')})"


def process_stat(pid: int) -> tuple[int, int] | None:
    """(session id, start time in ticks) of a live process, None if it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: fields are counted after its closing ')'.
    fields = text[text.rindex(")") + 2:].split()
    state, session, start = fields[0], int(fields[3]), int(fields[19])
    return None if state in ("Z", "X") else (session, start)


class DriverLock:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, version: str, attempts: int = 5, pause: float = 0.2) -> None:
        """Take the lock or raise LockBusy. Retries briefly: `holder()` probes with a momentary shared lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        for attempt in range(attempts):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == attempts - 1:
                    os.close(fd)
                    holder = self.holder()
                    raise LockBusy(f"{self.path} is held by {holder.describe() if holder else 'another process'}")
                time.sleep(pause)
        pid = os.getpid()
        record = {"pid": pid, "version": version, "host": socket.gethostname(),
                  "started_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                  "process_start": process_stat(pid)[1]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> DriverLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def descriptor(self) -> int:
        if self._fd is None:
            raise RuntimeError("lock not held")
        return self._fd

    def is_held(self) -> bool:
        """Whether any process holds the lock now (a non-blocking shared probe, released at once)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def last_holder(self, wait: float = 1.0) -> Holder | None:
        """The record the latest holder wrote, whether or not it still holds the lock."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return Holder.parse(self.path.read_text())
            except FileNotFoundError:
                return None
            except (ValueError, KeyError, TypeError):
                # A new holder is rewriting the record; it does so right after taking the lock.
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.05)

    def holder(self) -> Holder | None:
        """The current holder, or None when the lock is free."""
        return self.last_holder() if self.is_held() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", required=True, type=Path, help="lock file inside the query's checkpoint")
    parser.add_argument("--version", required=True, help="job version, recorded for the watchdog")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- spark-submit ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run after --")
    lock = DriverLock(args.lock)
    try:
        lock.acquire(args.version)
    except LockBusy as busy:
        print(f"driver_lock: refusing to start a second driver: {busy}", file=sys.stderr, flush=True)
        return LOCK_BUSY_EXIT
    # The driver leads a session of its own so a stop reaches everything it spawns; the locked descriptor
    # survives exec, handing the lock to the driver process (same pid).
    if os.getsid(0) != os.getpid():
        os.setsid()
    os.set_inheritable(lock.descriptor, True)
    print(f"driver_lock: {args.lock} held by pid {os.getpid()} (version {args.version})", file=sys.stderr, flush=True)
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
