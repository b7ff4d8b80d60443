"""Checkpoint purge on a real folder tree: a live query folder, a folder whose driver lock is held, an orphaned
old folder (with a symlink inside pointing outside), an orphaned recent folder, a symlink in the root pointing
outside, and a plain file. Exactly the orphaned old folder goes; nothing outside the root is read or touched."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from include.orchestration import driver_lock
from include.orchestration.purge import (effective_dry_run, execute_purge, folder_is_locked, hold_folder_lock,
                                         plan_purge)
from include.orchestration.supervision import QueryFiles

RETENTION = dt.timedelta(days=7)
OLD = time.time() - 10 * 86400


def write(path: Path, size: int, mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    if mtime:
        os.utime(path, (mtime, mtime))


def age_tree(folder: Path, mtime: float) -> None:
    for current, folders, files in os.walk(folder, topdown=False):
        for name in folders + files:
            os.utime(os.path.join(current, name), (mtime, mtime), follow_symlinks=False)
    os.utime(folder, (mtime, mtime))


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "checkpoints"
    outside = tmp_path / "outside"
    write(outside / "precious.bin", 5000, OLD)
    age_tree(outside, OLD)

    write(root / "live_query" / "offsets" / "0", 100, OLD)
    age_tree(root / "live_query", OLD)

    write(root / "orphan_old" / "offsets" / "0", 300)
    write(root / "orphan_old" / "commits" / "0", 20)
    write(root / "orphan_old" / "state" / "0" / "1.delta", 680)
    os.symlink(outside, root / "orphan_old" / "link_to_outside")
    age_tree(root / "orphan_old", OLD)

    write(root / "orphan_recent" / "offsets" / "0", 100, OLD)
    write(root / "orphan_recent" / "commits" / "7", 10)  # changed today: within retention
    age_tree(root / "orphan_recent" / "offsets", OLD)

    write(root / "locked_orphan" / "offsets" / "0", 100)
    age_tree(root / "locked_orphan", OLD)

    os.symlink(outside, root / "symlink_out")
    write(root / "README", 10, OLD)
    return root, outside


@pytest.fixture
def lock_holder():
    holders = []

    def hold(folder: Path) -> subprocess.Popen:
        lock = QueryFiles(folder).driver_lock
        process = subprocess.Popen([sys.executable, driver_lock.__file__, "--lock", str(lock.path), "--version", "x",
                                    "--", "sleep", "120"])
        holders.append(process)
        deadline = time.monotonic() + 10
        while not lock.is_held():
            assert time.monotonic() < deadline, "lock holder did not start"
            time.sleep(0.05)
        return process

    yield hold
    for process in holders:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()


def plan(root: Path):
    return plan_purge(root, {"live_query"}, RETENTION, dt.datetime.now(dt.timezone.utc), folder_is_locked)


def test_plan_lists_exactly_the_orphaned_old_folder_with_its_bytes(tree, lock_holder):
    root, outside = tree
    lock_holder(root / "locked_orphan")
    result = plan(root)
    link_size = len(str(outside))  # a symlink's own size is its target path; the target is not counted
    assert [(c.name, c.bytes) for c in result.remove] == [("orphan_old", 300 + 20 + 680 + link_size)]
    assert result.bytes == 1000 + link_size
    assert result.keep == {
        "README": "not a folder",
        "live_query": "registered or running query",
        "locked_orphan": "a driver holds its lock",
        "orphan_recent": result.keep["orphan_recent"],
        "symlink_out": "symlink: never followed",
    }
    assert result.keep["orphan_recent"].startswith("changed 0.0 days ago")
    # a dry run is the plan alone: nothing moved
    assert (root / "orphan_old" / "state" / "0" / "1.delta").exists()


def test_execute_removes_exactly_the_orphaned_old_folder(tree, lock_holder):
    root, outside = tree
    lock_holder(root / "locked_orphan")
    planned = plan(root)

    result = execute_purge(planned, hold_folder_lock)

    assert result.removed == ("orphan_old",) and result.skipped == {}
    assert result.bytes_freed == planned.bytes
    assert sorted(p.name for p in root.iterdir()) == ["README", "live_query", "locked_orphan", "orphan_recent",
                                                       "symlink_out"]
    assert (outside / "precious.bin").stat().st_size == 5000, "the symlinks' target is untouched"
    assert (root / "symlink_out").is_symlink()
    assert (root / "live_query" / "offsets" / "0").exists()


def test_a_folder_locked_after_planning_is_skipped(tree, lock_holder):
    root, _ = tree
    planned = plan(root)
    assert [c.name for c in planned.remove] == ["locked_orphan", "orphan_old"]
    lock_holder(root / "locked_orphan")

    result = execute_purge(planned, hold_folder_lock)

    assert result.removed == ("orphan_old",)
    assert result.skipped == {"locked_orphan": "a driver took its lock after planning"}
    assert (root / "locked_orphan" / "offsets" / "0").exists()


def test_a_folder_swapped_for_a_symlink_after_planning_is_skipped(tree):
    root, outside = tree
    planned = plan(root)
    os.rename(root / "orphan_old", root / "moved_away")
    os.symlink(outside, root / "orphan_old")

    result = execute_purge(planned, hold_folder_lock)

    assert "orphan_old" in result.skipped and (outside / "precious.bin").exists()


def test_missing_root_plans_nothing(tmp_path):
    assert plan(tmp_path / "nope").remove == ()


@pytest.mark.parametrize("param,run_type,expected", [
    (None, "manual", True), (None, "scheduled", False), (False, "manual", False), (True, "scheduled", True),
])
def test_dry_run_defaults_on_for_manual_runs_only(param, run_type, expected):
    assert effective_dry_run(param, run_type) is expected
