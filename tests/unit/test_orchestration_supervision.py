"""Driver-exit bookkeeping, backoff, failure causes from driver logs, offset-log parsing and lag."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from include.orchestration.checkpoint import CommittedBatch, kafka_lag, parse_offset_file
from include.orchestration.supervision import (DriverExit, QueryFiles, RestartRequest, append_exit, backoff_seconds,
                                               describe_exit, failure_cause, failures_within, is_trial_crash,
                                               judge_exit, read_exits, request_restart, restart_requested_since)

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def driver_exit(minutes_ago: float, failure: bool = True, requested_by: str | None = None) -> DriverExit:
    ended = NOW - dt.timedelta(minutes=minutes_ago)
    return DriverExit("v1", 123, ended - dt.timedelta(minutes=1), ended, 1, "boom", failure, requested_by)


def test_failures_within_the_window():
    exits = [driver_exit(5), driver_exit(10, requested_by="watchdog"), driver_exit(2, False, "deploy"),
             driver_exit(1, False), driver_exit(45), driver_exit(30)]
    recent = failures_within(exits, NOW, dt.timedelta(minutes=30))
    assert recent == [exits[0], exits[1], exits[5]]


@pytest.mark.parametrize("failures,expected", [(0, 0), (1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (12, 60)])
def test_backoff_doubles_up_to_the_cap(failures, expected):
    assert backoff_seconds(failures, base=5, cap=60) == expected


def test_history_round_trip(tmp_path):
    files = QueryFiles(tmp_path / "q")
    assert read_exits(files) == []
    first, second = driver_exit(5), driver_exit(1, False, requested_by="deploy")
    append_exit(files, first)
    append_exit(files, second)
    assert read_exits(files) == [first, second]


def test_restart_request_counts_only_from_the_given_moment(tmp_path):
    files = QueryFiles(tmp_path / "q")
    assert restart_requested_since(files, NOW) is None
    before = dt.datetime.now(dt.timezone.utc)
    request = request_restart(files, "watchdog", "stalled: no commit for 700 s", failure=True)
    assert restart_requested_since(files, before) == request
    assert request.failure and request.requested_by == "watchdog"
    assert restart_requested_since(files, request.at + dt.timedelta(microseconds=1)) is None


PYTHON_FAILURE = """\
26/03/01 12:00:01 INFO SparkContext: Running Spark version 4.1.1
Traceback (most recent call last):
  File "/r/streaming_job.py", line 88, in <module>
    main()
  File "/r/streaming_job.py", line 80, in main
    query.awaitTermination()
pyspark.errors.exceptions.captured.StreamingQueryException: [STREAM_FAILED] Query [id = 1] terminated with exception: Connection to 127.0.0.1:54329 refused
26/03/01 12:00:02 INFO ShutdownHookManager: Shutdown hook called
"""

JAVA_FAILURE = """\
26/03/01 12:00:01 INFO SparkContext: Running Spark version 4.1.1
Exception in thread "main" org.apache.spark.SparkException: Failed to find data source: kafka.
\tat org.apache.spark.sql.errors.QueryCompilationErrors$.failedToFindDataSourceError(QueryCompilationErrors.scala:1)
"""

ERROR_LINE_ONLY = """\
26/03/01 12:00:01 INFO Executor: Running task 0.0
26/03/01 12:00:02 ERROR MicroBatchExecution: Query eventos terminated with error
26/03/01 12:00:03 INFO ShutdownHookManager: Deleting directory
"""


@pytest.mark.parametrize("log,code,expected", [
    (PYTHON_FAILURE, 1, "pyspark.errors.exceptions.captured.StreamingQueryException: [STREAM_FAILED] Query [id = 1] "
                        "terminated with exception: Connection to 127.0.0.1:54329 refused (exit code 1)"),
    (JAVA_FAILURE, 1, 'Exception in thread "main" org.apache.spark.SparkException: Failed to find data source: kafka. '
                      "(exit code 1)"),
    (ERROR_LINE_ONLY, 1, "26/03/01 12:00:02 ERROR MicroBatchExecution: Query eventos terminated with error "
                         "(exit code 1)"),
    ("26/03/01 INFO all good\n", -9, "killed by SIGKILL"),
    ("", 137, "exit code 137 (SIGKILL)"),
    ("", 143, "exit code 143 (SIGTERM)"),
    ("", None, "exit status unknown"),
    ("driver_lock: refusing to start a second driver: x is held by pid 7", 75,
     "exit code 75: another driver holds the checkpoint lock"),
])
def test_failure_cause_names_the_most_telling_line(log, code, expected):
    assert failure_cause(log.splitlines(), code) == expected


def test_failure_cause_is_bounded():
    cause = failure_cause(["ValueError: " + "x" * 2000, "Traceback (most recent call last):"], 1, limit=50)
    assert cause.startswith("ValueError: xxx") and cause.endswith("… (exit code 1)") and len(cause) < 80


def test_describe_exit():
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(-15) == "killed by SIGTERM"


OFFSETS = """v1
{"batchWatermarkMs":0,"batchTimestampMs":1767225600000,"conf":{"spark.sql.shuffle.partitions":"2"}}
{"eventos":{"2":40,"1":12,"0":7}}
"""


def test_parse_offset_file():
    assert parse_offset_file(OFFSETS) == {"eventos": {0: 7, 1: 12, 2: 40}}
    with pytest.raises(ValueError):
        parse_offset_file('{"eventos": {}}')


def test_lag_sums_partitions_and_counts_unseen_partitions_from_zero():
    committed = CommittedBatch(3, {"eventos": {0: 7, 1: 12}}, NOW)
    assert kafka_lag("eventos", {0: 10, 1: 12, 2: 5}, committed) == 3 + 0 + 5
    assert kafka_lag("eventos", {0: 7, 1: 12}, committed) == 0
    assert kafka_lag("eventos", {0: 10}, None) is None


def test_trial_crash_is_the_first_driver_after_a_deploy_request_crashing():
    request = RestartRequest("deploy", "deploying v2", False, NOW - dt.timedelta(minutes=10), trial=True)
    stopped_old = DriverExit("v1", 1, NOW - dt.timedelta(hours=1), NOW - dt.timedelta(minutes=10), 143,
                             "restart requested by deploy", False, "deploy")
    first = DriverExit("v2", 2, NOW - dt.timedelta(minutes=9), NOW - dt.timedelta(minutes=8), 1, "boom", True)
    second = DriverExit("v2", 3, NOW - dt.timedelta(minutes=7), NOW - dt.timedelta(minutes=6), 1, "boom", True)
    assert is_trial_crash(first, request, [stopped_old, first])
    assert not is_trial_crash(second, request, [stopped_old, first, second]), "only the first driver is a trial"
    assert not is_trial_crash(first, replace(request, trial=False), [stopped_old, first])
    assert not is_trial_crash(first, None, [first])
    assert not is_trial_crash(replace(first, failure=False), request, [first])
    assert not is_trial_crash(stopped_old, request, [stopped_old]), "a driver started before the request"


WATCHDOG = RestartRequest("watchdog", "stalled: 5 waiting", True, NOW)
DEPLOY = RestartRequest("deploy", "deploying v2", False, NOW, trial=True)


@pytest.mark.parametrize("code,available_now,killed,asked,expected", [
    (0, True, False, None, ("finished: no more data", False)),
    (-9, True, False, None, ("ValueError: bad (killed by SIGKILL)", True)),
    (143, False, True, None, ("stopped by on_kill (ValueError: bad (exit code 143 (SIGTERM)))", False)),
    (143, False, True, WATCHDOG, ("stopped by on_kill (ValueError: bad (exit code 143 (SIGTERM)))", False)),
    (-9, False, False, WATCHDOG, ("restart requested by watchdog: stalled: 5 waiting", True)),
    (143, False, False, DEPLOY, ("restart requested by deploy: deploying v2", False)),
    (0, False, False, None, ("exit code 0, though a processing-time query runs until stopped", True)),
    (1, False, False, None, ("ValueError: bad (exit code 1)", True)),
])
def test_judge_exit(code, available_now, killed, asked, expected):
    output = ["Traceback (most recent call last):", "ValueError: bad"]
    assert judge_exit(code, available_now=available_now, killed=killed, request=asked, output=output) == expected
