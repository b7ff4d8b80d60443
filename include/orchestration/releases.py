"""Job releases: immutable bundles of the streaming job's code, and the pointer to the one that should run.

A release `<root>/<version>/` holds the job's code, the `spark` package and the shipped core of `include` (SHIPPED),
twice: as
`job.zip`, shipped to Spark with --py-files, and unpacked under `src/`, whose `spark/streaming_job.py` is the
entry point spark-submit runs. The job puts its own package root (`src/`) first on the driver's path, so the
driver reads its SQL templates from real files (include/schema.py's loader cannot read inside a zip) and imports
nothing from the working tree. `manifest.json` records the version and the sources' digest. Once built a release
never changes, so a deploy can always go back to the previous one even after the working tree moved on. The
pointer `<root>/<query>.current` names the version the supervisor submits next.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The job's code: the spark package and the core of include it imports (registry, contract, settings, connections,
# SQL rendering and the job's SQL templates). The Airflow glue (orchestration, extraction, MCP server, demo data)
# stays out, so editing a task body makes no new job version. A unit test imports the job from a release.
SHIPPED = ("spark/**/*.py", "include/__init__.py", "include/connections.py", "include/contract.py",
           "include/entities.py", "include/schema.py", "include/settings.py", "include/sql/stream_*.sql",
           "include/sql/sink_order.sql")
ENTRY_POINT = Path("spark") / "streaming_job.py"
# Fixed zip timestamps: the same sources always give the same bytes, so a digest identifies them.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class ReleaseError(RuntimeError):
    pass


@dataclass(frozen=True)
class Release:
    version: str
    folder: Path

    @property
    def application(self) -> Path:
        return self.folder / "src" / ENTRY_POINT

    @property
    def py_files(self) -> Path:
        return self.folder / "job.zip"

    @property
    def manifest(self) -> dict:
        return json.loads((self.folder / "manifest.json").read_text())


def validate_version(version: str) -> str:
    if not VERSION_PATTERN.fullmatch(version or ""):
        raise ReleaseError(f"invalid job version {version!r}: letters, digits, '.', '_', '-' (max 64)")
    return version


def source_files(source_root: Path) -> list[Path]:
    """The files a release ships, relative to the source root, in a stable order."""
    files = sorted({path.relative_to(source_root) for pattern in SHIPPED for path in source_root.glob(pattern)
                    if path.is_file() and "__pycache__" not in path.parts})
    if ENTRY_POINT not in files:
        raise ReleaseError(f"{source_root / ENTRY_POINT} does not exist: nothing to release")
    return files


def source_digest(source_root: Path) -> str:
    digest = hashlib.sha256()
    for relative in source_files(source_root):
        digest.update(str(relative).encode() + b"\0" + (source_root / relative).read_bytes() + b"\0")
    return digest.hexdigest()


class ReleaseStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def get(self, version: str) -> Release | None:
        folder = self.root / validate_version(version)
        return Release(version, folder) if (folder / "manifest.json").is_file() else None

    def build(self, version: str, source_root: Path) -> Release:
        """Package `source_root` as `version`. Idempotent: an existing release is returned unchanged."""
        existing = self.get(version)
        if existing:
            return existing
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.root))
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the release from other users (e.g. Spark's)
        try:
            files = source_files(source_root)
            with zipfile.ZipFile(staging / "job.zip", "w", zipfile.ZIP_DEFLATED) as bundle:
                for relative in files:
                    info = zipfile.ZipInfo(str(relative), _ZIP_TIME)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    bundle.writestr(info, (source_root / relative).read_bytes())
            with zipfile.ZipFile(staging / "job.zip") as bundle:
                bundle.extractall(staging / "src")
            manifest = {"version": version, "source": str(source_root), "digest": source_digest(source_root),
                        "files": len(files), "built_at": dt.datetime.now(dt.timezone.utc).isoformat()}
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
            try:
                # Atomic: a reader sees no release or a complete one.
                os.rename(staging, self.root / version)
            except OSError:
                if not self.get(version):
                    raise
                # Another build of the same version won the race; releases are immutable, so keep that one.
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.get(version)

    def build_tree(self, source_root: Path) -> Release:
        """The working tree as a release named by its content, so rebuilding unchanged sources is a no-op."""
        return self.build(f"tree-{source_digest(source_root)[:12]}", source_root)

    def _pointer(self, query_name: str) -> Path:
        return self.root / f"{query_name}.current"

    def current(self, query_name: str) -> Release | None:
        try:
            version = self._pointer(query_name).read_text().strip()
        except FileNotFoundError:
            return None
        release = self.get(version)
        if release is None:
            raise ReleaseError(f"{self._pointer(query_name)} names {version!r}, which is not a built release")
        return release

    def promote(self, query_name: str, version: str) -> str | None:
        """Point `query_name` at `version`; returns the version it pointed at before."""
        if self.get(version) is None:
            raise ReleaseError(f"cannot promote {version!r}: not a built release in {self.root}")
        previous = self.current(query_name)
        pointer = self._pointer(query_name)
        temporary = pointer.with_suffix(".tmp")
        temporary.write_text(version + "\n")
        os.replace(temporary, pointer)
        return previous.version if previous else None
