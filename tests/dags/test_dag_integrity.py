"""DagBag policy: every DAG file imports cleanly and fast, touches no connection or Variable while parsing,
and carries the metadata the team relies on (tags, docs, retries, no catch-up)."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS_FOLDER.glob("*.py") if not p.name.startswith("_"))
MAX_PARSE_SECONDS = 0.5


class ParseTimeAccess(AssertionError):
    pass


def _refuse(*args, **kwargs):
    raise ParseTimeAccess(f"connection or Variable looked up while parsing: {args!r}")


@pytest.fixture
def strict_parsing(monkeypatch):
    """Parsing must not need any connection or Variable: drop their env definitions and make look-ups raise."""
    import os

    import airflow.models.connection
    import airflow.models.variable
    import airflow.sdk.execution_time.context as task_context

    for name in [n for n in os.environ if n.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(task_context, "_get_connection", _refuse)
    monkeypatch.setattr(task_context, "_get_variable", _refuse)
    monkeypatch.setattr(airflow.models.variable.Variable, "get", _refuse)
    monkeypatch.setattr(airflow.models.connection.Connection, "get_connection_from_secrets", _refuse)


def _parse(path: Path):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(path), safe_mode=False)


def test_there_are_dags_to_check():
    assert DAG_FILES, f"no DAG files found in {DAGS_FOLDER}"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_cleanly_without_connections(strict_parsing, path):
    bag = _parse(path)
    assert not bag.import_errors, f"{path.name}: {bag.import_errors}"
    assert bag.dags, f"{path.name} defines no DAG"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_parses_fast(strict_parsing, path):
    _parse(path)  # the first parse pays for imports shared by all DAG files
    stats = _parse(path).dagbag_stats
    assert len(stats) == 1, f"expected parse statistics for {path.name} alone, got {stats}"
    seconds = stats[0].duration.total_seconds()
    assert seconds < MAX_PARSE_SECONDS, f"{path.name} took {seconds:.2f} s to parse"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_policy(strict_parsing, path):
    for dag_id, dag in _parse(path).dags.items():
        assert dag.tags, f"{dag_id}: no tags"
        assert dag.doc_md and dag.doc_md.strip(), f"{dag_id}: no doc_md"
        assert dag.catchup is False, f"{dag_id}: catchup must be off"
        for task in dag.tasks:
            assert task.retries >= 2, f"{dag_id}.{task.task_id}: retries={task.retries}, need >= 2"


def test_every_asset_has_one_name_per_uri_and_one_uri_per_name(strict_parsing, monkeypatch):
    """Airflow activates an asset only if no active one shares its name or its URI: two DAGs declaring one topic
    under two names would leave one of them inactive, and its tasks refuse to run. Checked under a topic other
    than the default, as the e2e tests configure."""
    from airflow.sdk import Asset

    monkeypatch.setenv("PIPELINE_KAFKA_TOPIC", "integrity_topic")
    assets = set()
    for path in DAG_FILES:
        for dag in _parse(path).dags.values():
            for task in dag.tasks:
                assets |= {(a.name, a.uri) for a in [*task.inlets, *task.outlets] if isinstance(a, Asset)}
    names = [name for name, _ in assets]
    uris = [uri for _, uri in assets]
    assert len(set(names)) == len(names) and len(set(uris)) == len(uris), sorted(assets)
    assert any(uri.endswith("/integrity_topic") for uri in uris)


def test_every_dag_takes_the_shared_defaults(strict_parsing):
    """One owner and one start date for all (include/orchestration/dag_defaults.py), retries with a delay."""
    from include.orchestration.dag_defaults import OWNER, START_DATE

    for path in DAG_FILES:
        for dag_id, dag in _parse(path).dags.items():
            assert dag.start_date == START_DATE, f"{dag_id}: start_date {dag.start_date}"
            for task in dag.tasks:
                assert task.owner == OWNER, f"{dag_id}.{task.task_id}: owner {task.owner!r}"
                assert task.retry_delay.total_seconds() > 0, f"{dag_id}.{task.task_id}: no retry delay"


# Client libraries that a DAG file may use only inside a task body: loading them at parse time costs every parse
# loop seconds (pyspark starts nothing, but imports py4j and pandas-sized modules) and ties parsing to them.
TASK_ONLY_MODULES = ("pyspark", "py4j", "kafka", "elasticsearch", "psycopg", "pyarrow")


def test_parsing_the_dags_loads_no_client_library():
    """In a fresh interpreter (this one has loaded pyspark for other tests): parse every DAG, then look."""
    import os
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAGS_FOLDER)!r}, safe_mode=False)\n"
        "assert bag.dags and not bag.import_errors, bag.import_errors\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({TASK_ONLY_MODULES!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=dict(os.environ),
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
