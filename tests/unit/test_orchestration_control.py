"""wait_until_healthy: consecutive healthy observations of the right driver, fail-fast for deploys, timeouts that
say what was seen last. The driver lock is held by this test process; observations are scripted."""

from __future__ import annotations

import datetime as dt

import pytest

from include.orchestration.control import NotHealthy, wait_until_healthy
from include.orchestration.health import HealthPolicy, JobObservation
from include.orchestration.supervision import DriverExit, QueryFiles, append_exit

POLICY = HealthPolicy(stall_after=dt.timedelta(minutes=10), max_lag=100, startup_grace=dt.timedelta(0))
GRACEFUL = HealthPolicy(stall_after=dt.timedelta(minutes=10), max_lag=100, startup_grace=dt.timedelta(minutes=5))


@pytest.fixture
def held(tmp_path):
    """QueryFiles whose driver lock this process holds as version v2, and the moment before it took it."""
    files = QueryFiles(tmp_path / "q")
    since = dt.datetime.now(dt.timezone.utc)
    lock = files.driver_lock
    lock.acquire("v2")
    yield files, since
    lock.release()


def scripted(*observations):
    remaining = list(observations)

    def observe() -> JobObservation:
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    return observe


def observation(lag, progress_offset_s=None):
    now = dt.datetime.now(dt.timezone.utc)
    progress = None if progress_offset_s is None else now + dt.timedelta(seconds=progress_offset_s)
    return JobObservation(now=now, driver_started_at=now - dt.timedelta(seconds=1), last_heartbeat_at=progress,
                          last_commit_at=None, lag=lag)


def wait(files, since, observe, policy=POLICY, **kwargs):
    return wait_until_healthy(files, observe, policy, since=since, timeout=dt.timedelta(seconds=1), interval=0.01,
                              **kwargs)


def test_three_healthy_observations_in_a_row(held):
    files, since = held
    healthy = wait(files, since, scripted(observation(0)), version="v2")
    assert healthy.version == "v2" and healthy.verdict.state.value == "healthy"


def test_waiting_work_needs_a_batch_since_the_start(held):
    files, since = held
    stale = observation(5, progress_offset_s=-3600)  # progress only from before this driver
    with pytest.raises(NotHealthy, match="no batch completed since it started"):
        wait(files, since, scripted(stale))
    fresh = observation(5, progress_offset_s=0)
    assert wait(files, since, scripted(stale, stale, fresh)).pid > 0


def test_a_broken_streak_starts_over(held):
    files, since = held
    calls = []
    good, bad = observation(0), observation(5, progress_offset_s=-3600)

    def observe():
        calls.append(1)
        return [good, good, bad, good, good, good][min(len(calls), 6) - 1]

    wait(files, since, observe)
    assert len(calls) == 6


def test_another_version_does_not_count(held):
    files, since = held
    with pytest.raises(NotHealthy, match="still running: pid .* \\(version v2"):
        wait(files, since, scripted(observation(0)), version="v3")


def test_a_driver_from_before_the_request_does_not_count(held):
    files, _ = held
    with pytest.raises(NotHealthy, match="still running"):
        wait(files, dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5), scripted(observation(0)))


def test_fail_fast_on_a_failure_of_the_awaited_version(held):
    files, since = held
    append_exit(files, DriverExit("v2", 99, since, since, 1, "RuntimeError: boom (exit code 1)", True))
    with pytest.raises(NotHealthy, match="driver of version v2 failed: RuntimeError: boom"):
        wait(files, since, scripted(observation(0)), fail_fast=True)
    # without fail_fast the supervisor's next driver may still make it
    assert wait(files, since, scripted(observation(0))).version == "v2"


def test_an_idle_new_driver_must_outlive_the_startup_grace(held):
    files, since = held
    with pytest.raises(NotHealthy, match="still in its startup grace"):
        wait(files, since, scripted(observation(0)), policy=GRACEFUL)
    # a completed batch proves it started, grace or not
    assert wait(files, since, scripted(observation(0, progress_offset_s=0)), policy=GRACEFUL).version == "v2"
