"""classify_job_health: every branch, its boundaries, and invariants over all combinations of inputs."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from include.orchestration.health import Health, HealthPolicy, JobObservation, classify_job_health

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
POLICY = HealthPolicy(stall_after=dt.timedelta(minutes=10), max_lag=1000, startup_grace=dt.timedelta(minutes=2))


def ago(**kwargs) -> dt.datetime:
    return NOW - dt.timedelta(**kwargs)


def observe(started=ago(hours=1), heartbeat=ago(seconds=10), commit=ago(seconds=30), lag=0) -> JobObservation:
    return JobObservation(now=NOW, driver_started_at=started, last_heartbeat_at=heartbeat, last_commit_at=commit,
                          lag=lag)


CASES = {
    # name: (observation, expected state, words the reason must contain)
    "no driver, recent batch": (observe(started=None), Health.DEAD,
                                "no driver holds the checkpoint lock (last batch 10 s ago)"),
    "no driver, never ran": (observe(started=None, heartbeat=None, commit=None, lag=None), Health.DEAD,
                             "no batch recorded"),
    "no driver, nothing to do": (observe(started=None, lag=0), Health.DEAD, "no driver"),
    "alive, idle for days, up to date": (observe(heartbeat=ago(days=2), commit=ago(days=2), lag=0),
                                         Health.HEALTHY, "0 messages behind"),
    "alive, small lag, progressing": (observe(lag=500), Health.HEALTHY, "500 messages behind"),
    "alive, lag at the limit": (observe(lag=1000), Health.HEALTHY, "1000 messages behind"),
    "alive, lag over the limit, progressing": (observe(lag=1001), Health.LAGGING, "1001 messages behind"),
    "lag unknown": (observe(lag=None, commit=None), Health.HEALTHY, "lag unknown"),
    "lag unknown, silent for hours": (observe(lag=None, heartbeat=ago(hours=3), commit=None), Health.HEALTHY,
                                      "last batch 10800 s ago"),
    "work waiting, nothing completed for too long": (observe(heartbeat=ago(minutes=11), commit=ago(minutes=12),
                                                             lag=5), Health.STALLED,
                                                     "5 messages waiting and no batch completed for 660 s"),
    "work waiting, exactly at the limit": (observe(heartbeat=ago(minutes=10), commit=ago(minutes=10), lag=5),
                                           Health.STALLED, "no batch completed for 600 s"),
    "work waiting, just inside the limit": (observe(heartbeat=ago(minutes=9, seconds=59), commit=None, lag=5),
                                            Health.HEALTHY, "5 messages behind"),
    "a heartbeat alone is progress": (observe(heartbeat=ago(seconds=5), commit=ago(hours=2), lag=5),
                                      Health.HEALTHY, "5 messages behind"),
    "a commit alone is progress": (observe(heartbeat=None, commit=ago(seconds=5), lag=5), Health.HEALTHY,
                                   "5 messages behind"),
    "work waiting, never completed a batch, started long ago": (observe(heartbeat=None, commit=None, lag=5),
                                                                Health.STALLED, "no batch completed for 3480 s"),
    "work waiting, never completed, within the startup grace": (observe(started=ago(minutes=2), heartbeat=None,
                                                                        commit=None, lag=5), Health.HEALTHY, "behind"),
    "work waiting, never completed, grace plus stall_after over": (observe(started=ago(minutes=12), heartbeat=None,
                                                                           commit=None, lag=5), Health.STALLED,
                                                                   "no batch completed for 600 s"),
    "work waiting, grace plus stall_after not yet over": (observe(started=ago(minutes=11, seconds=59),
                                                                  heartbeat=None, commit=None, lag=5),
                                                          Health.HEALTHY, "behind"),
    "old progress from before a fresh restart": (observe(started=ago(minutes=11), heartbeat=ago(hours=3),
                                                         commit=ago(hours=3), lag=5), Health.HEALTHY, "behind"),
    "stalled wins over lagging": (observe(heartbeat=ago(minutes=30), commit=ago(minutes=30), lag=50_000),
                                  Health.STALLED, "50000 messages waiting"),
}


@pytest.mark.parametrize("name", CASES)
def test_classification(name):
    observation, expected, words = CASES[name]
    verdict = classify_job_health(observation, POLICY)
    assert verdict.state is expected, verdict.reason
    assert words in verdict.reason


STARTS = [None, ago(seconds=20), ago(hours=1)]
MOMENTS = [None, ago(seconds=5), ago(minutes=30)]
LAGS = [None, 0, 5, 5000]


@pytest.mark.parametrize("started,heard,committed,lag", list(itertools.product(STARTS, MOMENTS, MOMENTS, LAGS)))
def test_invariants(started, heard, committed, lag):
    verdict = classify_job_health(observe(started, heard, committed, lag), POLICY)
    assert (verdict.state is Health.DEAD) == (started is None)
    if lag is None or lag <= POLICY.max_lag:
        assert verdict.state is not Health.LAGGING
    if lag in (None, 0) and started is not None:
        assert verdict.state is Health.HEALTHY, "no work waiting (or unknown) is never a stall"
    if started is not None and (heard == ago(seconds=5) or committed == ago(seconds=5)):
        assert verdict.state is not Health.STALLED, "a batch 5 s ago is progress"
    assert verdict.state.needs_restart == (verdict.state in (Health.STALLED, Health.DEAD))
    assert verdict.reason


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        HealthPolicy(stall_after=dt.timedelta(0))
    with pytest.raises(ValueError):
        HealthPolicy(max_lag=-1)
    with pytest.raises(ValueError):
        HealthPolicy(startup_grace=dt.timedelta(seconds=-1))
