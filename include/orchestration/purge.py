"""Checkpoint purge: plan which query folders under the checkpoint root can go, then remove exactly those.

A folder is removed only when it belongs to no registered or running query, no driver holds its lock, and
nothing inside it changed within the retention. Symlinks are never followed: a symlink in the root is kept and
its target never read; a symlink inside a removed folder is unlinked, not traversed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from include.orchestration.driver_lock import DriverLock, LockBusy
from include.orchestration.supervision import QueryFiles

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderUsage:
    bytes: int
    newest_change: dt.datetime


@dataclass(frozen=True)
class Candidate:
    name: str
    path: Path
    bytes: int
    newest_change: dt.datetime


@dataclass(frozen=True)
class PurgePlan:
    root: Path
    retention: dt.timedelta
    remove: tuple[Candidate, ...]
    # name -> why it stays
    keep: dict[str, str] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.remove)

    def as_dict(self) -> dict:
        return {
            "root": str(self.root),
            "retention_days": self.retention / dt.timedelta(days=1),
            "remove": [{"name": c.name, "bytes": c.bytes, "newest_change": c.newest_change.isoformat()}
                       for c in self.remove],
            "keep": dict(self.keep),
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class PurgeResult:
    removed: tuple[str, ...]
    bytes_freed: int
    # name -> why it was not removed after all (re-checked at removal time)
    skipped: dict[str, str]

    def as_dict(self) -> dict:
        return {"removed": list(self.removed), "bytes_freed": self.bytes_freed, "skipped": dict(self.skipped)}


def effective_dry_run(dry_run: bool | None, run_type: str) -> bool:
    """The `dry_run` param: unset means a dry run for runs triggered by hand and a real purge for scheduled ones."""
    return run_type == "manual" if dry_run is None else dry_run


def folder_usage(path: Path) -> FolderUsage:
    """Bytes of every non-folder entry and the newest change anywhere inside, without following symlinks."""
    top = os.lstat(path)
    total, newest = 0, top.st_mtime
    for current, folders, files in os.walk(path, followlinks=False):
        for name in folders + files:
            info = os.lstat(os.path.join(current, name))
            newest = max(newest, info.st_mtime)
            if not stat.S_ISDIR(info.st_mode):
                total += info.st_size
    return FolderUsage(total, dt.datetime.fromtimestamp(newest, dt.timezone.utc))


def plan_purge(
    root: Path,
    live_queries: Iterable[str],
    retention: dt.timedelta,
    now: dt.datetime,
    is_locked: Callable[[Path], bool],
) -> PurgePlan:
    """What a purge would remove under `root`. `live_queries`: registered or running query names;
    `is_locked(folder)`: whether a driver holds that folder's lock right now."""
    live = set(live_queries)
    remove: list[Candidate] = []
    keep: dict[str, str] = {}
    if not root.is_dir():
        return PurgePlan(root, retention, (), {})
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.is_symlink():
            keep[entry.name] = "symlink: never followed"
        elif not entry.is_dir(follow_symlinks=False):
            keep[entry.name] = "not a folder"
        elif entry.name in live:
            keep[entry.name] = "registered or running query"
        elif is_locked(path):
            keep[entry.name] = "a driver holds its lock"
        else:
            usage = folder_usage(path)
            age = now - usage.newest_change
            if age < retention:
                keep[entry.name] = f"changed {age.total_seconds() / 86400:.1f} days ago, within retention"
            else:
                remove.append(Candidate(entry.name, path, usage.bytes, usage.newest_change))
    return PurgePlan(root, retention, tuple(remove), keep)


def execute_purge(plan: PurgePlan, hold_lock: Callable[[Path], object | None]) -> PurgeResult:
    """Remove the plan's folders (a dry run stops at the plan). `hold_lock(folder)` returns a context manager
    holding the folder's driver lock, or None if a driver holds it: the lock is held while the folder is removed,
    so no driver can start in it meanwhile."""
    removed: list[str] = []
    skipped: dict[str, str] = {}
    freed = 0
    for candidate in plan.remove:
        path = candidate.path
        # Re-checked here: the tree may have changed since planning.
        if path.is_symlink() or not path.is_dir() or path.parent.resolve() != plan.root.resolve():
            skipped[candidate.name] = "no longer a folder directly under the root"
            continue
        lock = hold_lock(path)
        if lock is None:
            skipped[candidate.name] = "a driver took its lock after planning"
            continue
        with lock:
            shutil.rmtree(path)
        removed.append(candidate.name)
        freed += candidate.bytes
        log.info("removed %s (%s bytes)", path, candidate.bytes)
    return PurgeResult(tuple(removed), freed, skipped)


def folder_is_locked(folder: Path) -> bool:
    return QueryFiles(folder).driver_lock.is_held()


def hold_folder_lock(folder: Path) -> DriverLock | None:
    lock = QueryFiles(folder).driver_lock
    try:
        lock.acquire("checkpoint-purge", attempts=1)
    except LockBusy:
        return None
    return lock
