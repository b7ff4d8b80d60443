"""Release bundles: what they ship, immutability, idempotent builds, and the current-version pointer."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from include.orchestration.releases import ReleaseError, ReleaseStore, source_digest
from include.settings import REPO_ROOT


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "src"
    for relative, text in {
        "spark/__init__.py": "",
        "spark/streaming_job.py": "print('v1')\n",
        "spark/__pycache__/streaming_job.cpython-311.pyc": "binary",
        "include/__init__.py": "",
        "include/sql/stream_merge.sql": "SELECT 1\n",
        "include/sql/quality_row_count.sql": "glue, not shipped\n",
        "include/orchestration/tasks.py": "glue, not shipped\n",
        "include/notes.md": "not shipped\n",
        "tests/test_x.py": "not shipped\n",
    }.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def test_build_ships_the_job_and_the_shipped_core_only(tmp_path, source):
    release = ReleaseStore(tmp_path / "releases").build("v1", source)
    with zipfile.ZipFile(release.py_files) as bundle:
        assert sorted(bundle.namelist()) == ["include/__init__.py", "include/sql/stream_merge.sql", "spark/__init__.py",
                                             "spark/streaming_job.py"]
    assert release.application == release.folder / "src" / "spark" / "streaming_job.py"
    assert release.application.read_text() == "print('v1')\n"
    unpacked = sorted(str(p.relative_to(release.folder / "src")) for p in (release.folder / "src").rglob("*.*"))
    assert unpacked == ["include/__init__.py", "include/sql/stream_merge.sql", "spark/__init__.py", "spark/streaming_job.py"]
    assert release.manifest["version"] == "v1" and release.manifest["digest"] == source_digest(source)


def test_a_release_is_immutable_and_rebuilding_is_a_no_op(tmp_path, source):
    store = ReleaseStore(tmp_path / "releases")
    first = store.build("v1", source)
    zip_bytes = first.py_files.read_bytes()
    (source / "spark" / "streaming_job.py").write_text("print('v2')\n")
    again = store.build("v1", source)
    assert again == first and again.py_files.read_bytes() == zip_bytes
    assert again.application.read_text() == "print('v1')\n"


def test_tree_releases_are_named_by_content(tmp_path, source):
    store = ReleaseStore(tmp_path / "releases")
    first = store.build_tree(source)
    assert store.build_tree(source) == first
    (source / "include" / "orchestration" / "tasks.py").write_text("glue changed\n")
    assert store.build_tree(source) == first  # the Airflow glue is not the job
    (source / "include" / "sql" / "stream_merge.sql").write_text("SELECT 2\n")
    second = store.build_tree(source)
    assert second.version != first.version and second.version.startswith("tree-")


def test_same_sources_give_the_same_zip(tmp_path, source):
    a = ReleaseStore(tmp_path / "a").build("v1", source)
    b = ReleaseStore(tmp_path / "b").build("v1", source)
    assert a.py_files.read_bytes() == b.py_files.read_bytes()


def test_pointer(tmp_path, source):
    store = ReleaseStore(tmp_path / "releases")
    store.build("v1", source)
    store.build("v2", source)
    assert store.current("q") is None
    assert store.promote("q", "v1") is None
    assert store.promote("q", "v2") == "v1"
    assert store.current("q").version == "v2"
    assert store.current("other") is None
    with pytest.raises(ReleaseError, match="not a built release"):
        store.promote("q", "v3")


@pytest.mark.parametrize("version", ["", "../evil", "a/b", "-x", "x" * 65])
def test_invalid_versions_are_refused(tmp_path, source, version):
    with pytest.raises(ReleaseError, match="invalid job version"):
        ReleaseStore(tmp_path / "releases").build(version, source)


def test_a_tree_without_the_entry_point_cannot_be_released(tmp_path, source):
    (source / "spark" / "streaming_job.py").unlink()
    with pytest.raises(ReleaseError, match="nothing to release"):
        ReleaseStore(tmp_path / "releases").build("v1", source)
    assert not any((tmp_path / "releases").iterdir())


def test_the_job_runs_from_a_release_of_the_repository_alone(tmp_path):
    """Everything the job imports and renders is in the release, and nothing of the Airflow glue is."""
    release = ReleaseStore(tmp_path / "releases").build("v1", REPO_ROOT)
    with zipfile.ZipFile(release.py_files) as bundle:
        names = bundle.namelist()
    assert not [n for n in names if n.startswith(("include/orchestration/", "include/extract/", "dags/", "plugins/"))]
    probe = (
        "import sys; sys.path[0] = sys.argv[1]\n"
        "import spark.streaming_job, spark.sinks.batch, spark.heartbeat\n"
        "from include.settings import load_settings\n"
        "from spark.sinks.postgres import PostgresSink\n"
        "PostgresSink(load_settings(require_secrets=False))  # renders every SQL macro of the merge\n"
        "print('\\n'.join(m.__file__ for m in list(sys.modules.values())\n"
        "                 if m.__name__.split('.')[0] in ('spark', 'include')))\n"
    )
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    loaded = subprocess.run([sys.executable, "-c", probe, str(release.folder / "src")], cwd=tmp_path,
                            env=environment, capture_output=True, text=True, check=True).stdout.split()
    assert loaded and all(path.startswith(str(release.folder / "src")) for path in loaded), loaded
