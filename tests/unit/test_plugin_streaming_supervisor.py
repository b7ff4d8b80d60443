"""SupervisedSparkSubmitOperator without Spark: its supervision loop over scripted driver exits, its locks, and the
spark-submit command its hook builds (the real provider hook, the connection from the environment)."""

from __future__ import annotations

import datetime as dt
import json
import sys

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from include.orchestration import driver_lock
from include.orchestration.config import StreamOpsConfig
from include.orchestration.releases import ReleaseStore
from include.orchestration.supervision import DriverExit, read_exits

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def ops_env(monkeypatch, tmp_path):
    """Settings for one query whose checkpoint and releases live under tmp_path; release v1 built, not selected."""
    monkeypatch.setenv("PIPELINE_PG_PASSWORD", "unused")
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PIPELINE_STREAM_CHECKPOINT_ROOT", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("PIPELINE_STREAM_QUERY_NAME", "q1")
    monkeypatch.setenv("PIPELINE_SUPERVISOR_MAX_FAILURES", "3")
    monkeypatch.setenv("PIPELINE_SUPERVISOR_BACKOFF_SECONDS", "5")
    monkeypatch.setenv("PIPELINE_SUPERVISOR_BACKOFF_MAX_SECONDS", "8")
    source = tmp_path / "src"
    for relative in ("spark/__init__.py", "spark/streaming_job.py", "include/__init__.py"):
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_text("")
    config = StreamOpsConfig.load()
    ReleaseStore(config.releases_root).build("v1", source)
    return config


def _select_v1(config: StreamOpsConfig) -> None:
    ReleaseStore(config.releases_root).promote(config.query_name, "v1")


def _supervisor_class():
    from streaming_supervisor import SupervisedSparkSubmitOperator

    class ScriptedSupervisor(SupervisedSparkSubmitOperator):
        """The real loop; each driver run returns the next scripted (exit code, failure) instead of spark-submit."""

        def __init__(self, *, script, **kwargs):
            super().__init__(task_id="run_driver", **kwargs)
            self.script = list(script)
            self.waits: list[float] = []

        def _run_driver(self, context):
            exit_code, failure = self.script.pop(0)
            minute = dt.timedelta(minutes=len(self.waits))
            return DriverExit(self._release.version, 4242, NOW + minute, NOW + minute, exit_code,
                              f"exit {exit_code}", failure)

        def _wait_before_resubmit(self, since, delay):
            self.waits.append(delay)

    return ScriptedSupervisor


def test_an_unknown_trigger_fails_without_retries():
    with pytest.raises(AirflowFailException, match="trigger 'sometimes'"):
        _supervisor_class()(script=[], trigger="sometimes").execute({"run_id": "r"})


def test_an_available_now_run_ends_with_the_drivers_success(ops_env):
    _select_v1(ops_env)
    supervisor = _supervisor_class()(script=[(0, False)], trigger="available-now")
    assert supervisor.execute({"run_id": "r"})["version"] == "v1"
    assert [e.exit_code for e in read_exits(ops_env.files)] == [0]
    assert not ops_env.files.supervisor_lock.is_held()


def test_crashes_are_resubmitted_with_growing_backoff_until_the_limit(ops_env):
    _select_v1(ops_env)
    supervisor = _supervisor_class()(script=[(1, True)] * 3)
    with pytest.raises(AirflowException, match="3 driver crashes within"):
        supervisor.execute({"run_id": "r"})
    assert supervisor.waits == [5.0, 8.0]  # doubled, then capped by the backoff maximum
    assert len(read_exits(ops_env.files)) == 3
    assert not ops_env.files.supervisor_lock.is_held()


def test_a_second_supervisor_of_the_same_query_fails_at_once(ops_env):
    _select_v1(ops_env)
    other = ops_env.files.supervisor_lock
    other.acquire("another supervisor", attempts=1)
    with other:
        with pytest.raises(AirflowFailException, match="another supervisor owns query q1"):
            _supervisor_class()(script=[(0, False)], trigger="available-now").execute({"run_id": "r"})


def test_without_a_selected_release_the_task_fails_saying_so(ops_env):
    with pytest.raises(AirflowFailException, match="no release selected for query q1"):
        _supervisor_class()(script=[], trigger="available-now").execute({"run_id": "r"})


def test_the_hook_runs_spark_submit_under_the_driver_lock(monkeypatch, tmp_path):
    from streaming_supervisor import LockedSparkSubmitHook

    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps(
        {"conn_type": "spark", "host": "local[2]", "extra": {"deploy-mode": "client"}}))
    hook = LockedSparkSubmitHook(lock_path=tmp_path / "driver.lock", version="v9", driver_log=tmp_path / "d.log",
                                 working_dir=tmp_path, conn_id="spark_default", application_args=["--x", "1"])
    command = hook._build_spark_submit_command("job.py")
    assert command[:6] == [sys.executable, driver_lock.__file__, "--lock", str(tmp_path / "driver.lock"),
                           "--version", "v9"]
    submit = command[command.index("--") + 1:]
    assert submit[0].endswith("spark-submit") and submit[-3:] == ["job.py", "--x", "1"]
    assert submit[submit.index("--master") + 1] == "local[2]"
