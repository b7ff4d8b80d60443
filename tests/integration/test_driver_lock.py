"""The driver lock with real processes: exclusive while held, dropped by the kernel when the holder dies (SIGKILL
included), held by the exec'd command itself, and stop_driver ending the driver's whole session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from include.orchestration import driver_lock
from include.orchestration.driver_lock import LOCK_BUSY_EXIT, DriverLock, LockBusy, process_stat
from include.orchestration.processes import session_members, stop_driver

WRAPPER = Path(driver_lock.__file__)
# Like the Spark JVM: a driver that spawns a child without passing it its descriptors, then waits. The child
# makes a process group of its own, as pyspark.daemon does.
DRIVER_WITH_CHILD = (
    "import os, subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], close_fds=True,\n"
    "                         process_group=0)\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(300)\n"
)


@pytest.fixture
def started(tmp_path):
    """Start commands under the lock wrapper; anything still running is killed (by pid) afterwards."""
    processes: list[subprocess.Popen] = []

    def start(lock: Path, *command: str, version: str = "v1") -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, str(WRAPPER), "--lock", str(lock), "--version", version, "--",
                                    *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the wrapper made it a session (and group) leader
            except ProcessLookupError:
                os.kill(process.pid, signal.SIGKILL)  # not a group leader yet: the wrapper itself
        process.wait()


def wait_for_holder(lock: DriverLock, pid: int, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = lock.holder()
        if holder and holder.pid == pid:
            return holder
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} never took {lock.path}")


def test_second_driver_is_refused_while_the_first_holds(tmp_path, started):
    lock_path = tmp_path / "q" / "_supervisor" / "driver.lock"
    first = started(lock_path, "sleep", "120")
    holder = wait_for_holder(DriverLock(lock_path), first.pid)
    assert holder.version == "v1" and holder.process_start == process_stat(first.pid)[1]

    second = started(lock_path, "sleep", "120", version="v2")
    assert second.wait(timeout=20) == LOCK_BUSY_EXIT
    assert f"held by pid {first.pid} (version v1" in second.stderr.read()
    with pytest.raises(LockBusy):
        DriverLock(lock_path).acquire("v3", attempts=2)
    assert DriverLock(lock_path).holder().pid == first.pid


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_lock_is_released_when_the_holder_dies(tmp_path, started, sig):
    lock_path = tmp_path / "driver.lock"
    lock = DriverLock(lock_path)
    first = started(lock_path, "sleep", "120")
    wait_for_holder(lock, first.pid)
    # The wrapper execs `sleep` right after taking the lock: the command itself then holds it, same pid.
    deadline = time.monotonic() + 10
    while Path(f"/proc/{first.pid}/cmdline").read_bytes().split(b"\0")[0] != b"sleep":
        assert time.monotonic() < deadline, "the wrapper did not exec the command"
        time.sleep(0.05)
    assert lock.holder().pid == first.pid
    os.kill(first.pid, sig)
    first.wait(timeout=10)
    assert not lock.is_held() and lock.holder() is None
    assert lock.last_holder().pid == first.pid  # the record outlives the holder, for clean-up
    second = started(lock_path, "sleep", "120", version="v2")
    assert wait_for_holder(lock, second.pid).version == "v2"


def test_in_process_acquire_and_release(tmp_path):
    lock = DriverLock(tmp_path / "driver.lock")
    assert lock.holder() is None and not lock.is_held()
    with DriverLock(tmp_path / "driver.lock") as held:
        held.acquire("v9")
        assert lock.holder().pid == os.getpid()
        with pytest.raises(LockBusy, match=f"held by pid {os.getpid()}"):
            DriverLock(tmp_path / "driver.lock").acquire("v10", attempts=1)
    assert not lock.is_held()


def test_stop_driver_ends_the_group_and_frees_the_lock(tmp_path, started):
    lock_path = tmp_path / "driver.lock"
    lock = DriverLock(lock_path)
    driver = started(lock_path, sys.executable, "-c", DRIVER_WITH_CHILD)
    holder = wait_for_holder(lock, driver.pid)
    child = int(driver.stdout.readline())
    assert process_stat(child)[0] == driver.pid, "the child shares the driver's session"
    assert session_members(holder) == sorted([driver.pid, child])
    os.kill(driver.pid, signal.SIGSTOP)  # a hung driver: alive, holding the lock, not acting on SIGTERM

    outcome = stop_driver(lock, grace=10)

    assert outcome.pid == driver.pid and outcome.signal == "SIGTERM"
    assert driver.wait(timeout=10) == -signal.SIGTERM
    assert not lock.is_held()
    assert process_stat(child) is None


def test_stop_driver_kills_what_a_dead_driver_left(tmp_path, started):
    lock_path = tmp_path / "driver.lock"
    lock = DriverLock(lock_path)
    driver = started(lock_path, sys.executable, "-c", DRIVER_WITH_CHILD)
    wait_for_holder(lock, driver.pid)
    child = int(driver.stdout.readline())
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=10)
    assert not lock.is_held(), "the child did not inherit the lock"
    assert process_stat(child) is not None, "the child outlived the driver"

    outcome = stop_driver(lock, grace=10)

    assert outcome.pid is None and outcome.signal is None and outcome.leftovers_killed == (child,)
    assert process_stat(child) is None


def test_stop_driver_escalates_to_sigkill(tmp_path, started):
    lock_path = tmp_path / "driver.lock"
    lock = DriverLock(lock_path)
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(300)\n"
    driver = started(lock_path, sys.executable, "-c", stubborn)
    wait_for_holder(lock, driver.pid)
    assert driver.stdout.readline().strip() == "ready"
    outcome = stop_driver(lock, grace=1)
    assert outcome.signal == "SIGKILL" and driver.wait(timeout=10) == -signal.SIGKILL
    assert not lock.is_held()


def test_stop_driver_with_nothing_running_is_a_no_op(tmp_path):
    assert stop_driver(DriverLock(tmp_path / "driver.lock"), grace=1).pid is None


def test_forced_stop_kills_a_stopped_driver_at_once(tmp_path, started):
    lock_path = tmp_path / "driver.lock"
    lock = DriverLock(lock_path)
    driver = started(lock_path, sys.executable, "-c", DRIVER_WITH_CHILD)
    wait_for_holder(lock, driver.pid)
    child = int(driver.stdout.readline())
    os.kill(driver.pid, signal.SIGSTOP)

    outcome = stop_driver(lock, grace=60, force=True)

    assert (outcome.pid, outcome.signal) == (driver.pid, "SIGKILL")
    assert driver.wait(timeout=10) == -signal.SIGKILL
    assert process_stat(child) is None and not lock.is_held()
