"""Restarting the supervised driver and waiting until a driver is healthy: shared by the watchdog and deploys.

Only the supervisor (the Airflow task holding the supervisor lock) ever submits a driver. Everyone else changes
what it should run (the release pointer), records why the running driver is about to end (a restart request),
and stops it; the supervisor resubmits at once. So there is one owner of the driver's lifetime, and the driver
lock makes a second driver impossible even if that rule were broken.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Callable

from include.orchestration.health import Health, HealthPolicy, HealthVerdict, JobObservation, classify_job_health
from include.orchestration.processes import stop_driver
from include.orchestration.supervision import QueryFiles, RestartRequest, read_exits, request_restart

log = logging.getLogger(__name__)


class NoSupervisor(RuntimeError):
    """Nothing would resubmit the driver: the supervisor DAG's task is not running."""


class NotHealthy(RuntimeError):
    """No healthy driver within the allowed time; the message says what was seen last."""


def require_supervisor(files: QueryFiles) -> None:
    if not files.supervisor_lock.is_held():
        raise NoSupervisor(f"no supervisor holds {files.supervisor_lock.path}: the stream_supervisor DAG is not "
                           "running (paused, or its run failed), so nothing would resubmit the driver")


def restart_driver(files: QueryFiles, requested_by: str, reason: str, failure: bool, grace: float,
                   trial: bool = False, force: bool = False) -> RestartRequest:
    """Stop the running driver (or what a dead one left) so the supervisor resubmits from the release pointer;
    `force` kills at once (a stalled driver gains nothing from a grace period and may never honour SIGTERM)."""
    require_supervisor(files)
    request = request_restart(files, requested_by, reason, failure, trial)
    outcome = stop_driver(files.driver_lock, grace, force)
    log.info("restart requested by %s (%s): stopped pid %s with %s, leftovers killed %s", requested_by, reason,
             outcome.pid, outcome.signal, list(outcome.leftovers_killed))
    return request


@dataclass(frozen=True)
class Healthy:
    version: str
    pid: int
    verdict: HealthVerdict
    waited_seconds: float


def wait_until_healthy(
    files: QueryFiles,
    observe: Callable[[], JobObservation],
    policy: HealthPolicy,
    since: dt.datetime,
    timeout: dt.timedelta,
    version: str | None = None,
    fail_fast: bool = False,
    checks: int = 3,
    interval: float = 5.0,
) -> Healthy:
    """Wait for a driver started after `since` (of `version`, if given) to be judged healthy or lagging `checks`
    times in a row, having completed a batch (or, with nothing to process, outlived the startup grace). With
    `fail_fast` (a deploy on trial), the first failure of such a driver ends the wait; otherwise the supervisor's
    resubmissions get the whole time."""
    started = time.monotonic()
    streak, last = 0, "no driver started yet"
    while True:
        holder = files.driver_lock.holder()
        failed = [e for e in read_exits(files) if e.started_at >= since and e.failure
                  and (version is None or e.version == version)]
        if failed and fail_fast:
            raise NotHealthy(f"driver of version {failed[-1].version} failed: {failed[-1].cause}")
        if holder and holder.started_at >= since and (version is None or holder.version == version):
            observation = observe()
            verdict = classify_job_health(observation, policy)
            # With work waiting, the new driver must complete a batch. With none there is no batch to show (Spark
            # reports nothing while idle), so it must outlive the startup grace, in which a job that cannot start
            # (bad code, bad configuration) fails.
            progressed = (observation.last_progress_at is not None
                          and observation.last_progress_at >= holder.started_at) or (
                observation.lag == 0 and observation.now - holder.started_at >= policy.startup_grace)
            if progressed and verdict.state in (Health.HEALTHY, Health.LAGGING):
                streak += 1
                if streak >= checks:
                    return Healthy(holder.version, holder.pid, verdict, time.monotonic() - started)
            else:
                streak = 0
            last = (f"driver pid {holder.pid} (version {holder.version}): {verdict.state.value}, {verdict.reason}"
                    + ("" if progressed else "; no batch completed since it started (or, idle, still in its "
                                             "startup grace)"))
        elif holder:
            last = f"still running: {holder.describe()}"
        elif failed:
            last = f"driver of version {failed[-1].version} failed: {failed[-1].cause}"
        if time.monotonic() - started >= timeout.total_seconds():
            raise NotHealthy(f"no healthy driver within {timeout.total_seconds():.0f} s; last seen: {last}")
        time.sleep(interval)
