"""Classifies the streaming job from what can be observed from outside the driver.

The observation comes from independent sources: the driver lock (is a driver process alive, since when?), the
checkpoint's commit log and the heartbeat table (when did a batch last complete?) and Kafka's end offsets against
the committed offsets (is work waiting?). Spark 4 reports no progress while a query is idle (it posts
`onQueryIdle` instead), so silence alone means nothing: a job is stalled only when work is waiting and no batch
completed for too long.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass


class Health(str, enum.Enum):
    HEALTHY = "healthy"
    LAGGING = "lagging"
    STALLED = "stalled"
    DEAD = "dead"

    @property
    def needs_restart(self) -> bool:
        return self in (Health.STALLED, Health.DEAD)


@dataclass(frozen=True)
class HealthPolicy:
    # Alive, work waiting, and no batch completed for this long: stalled. Must exceed the longest normal batch.
    stall_after: dt.timedelta = dt.timedelta(minutes=10)
    # More messages than this waiting: lagging (alive and progressing, but behind).
    max_lag: int = 10_000
    # A new driver's JVM, session and first batch take this long before its lack of progress counts.
    startup_grace: dt.timedelta = dt.timedelta(minutes=3)

    def __post_init__(self):
        if self.stall_after <= dt.timedelta(0):
            raise ValueError("stall_after must be positive")
        if self.startup_grace < dt.timedelta(0):
            raise ValueError("startup_grace must not be negative")
        if self.max_lag < 0:
            raise ValueError("max_lag must not be negative")


@dataclass(frozen=True)
class JobObservation:
    now: dt.datetime
    # When the driver that holds the lock started; None when no driver holds it.
    driver_started_at: dt.datetime | None
    # Evidence of completed batches: the latest heartbeat (written per batch) and the latest checkpoint commit.
    last_heartbeat_at: dt.datetime | None
    last_commit_at: dt.datetime | None
    # Kafka end offsets minus the committed offsets, summed over partitions; None when unknown.
    lag: int | None

    @property
    def last_progress_at(self) -> dt.datetime | None:
        return _latest(self.last_heartbeat_at, self.last_commit_at)


@dataclass(frozen=True)
class HealthVerdict:
    state: Health
    reason: str


def _latest(*moments: dt.datetime | None) -> dt.datetime | None:
    present = [m for m in moments if m is not None]
    return max(present) if present else None


def _seconds(delta: dt.timedelta) -> str:
    return f"{delta.total_seconds():.0f} s"


def classify_job_health(observation: JobObservation, policy: HealthPolicy = HealthPolicy()) -> HealthVerdict:
    """healthy / lagging / stalled / dead, with the reason in words.

    Lack of progress is measured from the later of the last completed batch and the end of the driver's startup
    grace, so a driver that just (re)started is not condemned for its predecessor's past or its own start.
    """
    now = observation.now
    progress = observation.last_progress_at
    last = f"last batch {_seconds(now - progress)} ago" if progress else "no batch recorded"
    if observation.driver_started_at is None:
        return HealthVerdict(Health.DEAD, f"no driver holds the checkpoint lock ({last})")

    lag = observation.lag
    if lag is None:
        return HealthVerdict(Health.HEALTHY, f"driver alive, Kafka lag unknown (no committed batch); {last}")
    since_progress = now - _latest(progress, observation.driver_started_at + policy.startup_grace)
    if lag > 0 and since_progress >= policy.stall_after:
        return HealthVerdict(
            Health.STALLED,
            f"{lag} messages waiting and no batch completed for {_seconds(since_progress)} "
            f"(stall after {_seconds(policy.stall_after)})",
        )
    if lag > policy.max_lag:
        return HealthVerdict(Health.LAGGING, f"{lag} messages behind (more than {policy.max_lag}), still progressing")
    return HealthVerdict(Health.HEALTHY, f"driver alive, {lag} messages behind")
