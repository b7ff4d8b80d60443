"""Task bodies of the streaming-operation DAGs, wired to Airflow's connections.

DAG files import this inside their tasks only, so parsing loads no provider and opens nothing. Each function is
idempotent: it re-observes before acting, so a retry never repeats an action that already took effect.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from contextlib import closing, contextmanager
from typing import Callable, Iterator, NoReturn

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from include.connections import WAREHOUSE_CONN_ID, kafka_bootstrap, postgres_connection
from include.orchestration.config import StreamOpsConfig
from include.orchestration.control import (NoSupervisor, NotHealthy, require_supervisor, restart_driver,
                                          wait_until_healthy)
from include.orchestration.health import Health, JobObservation, classify_job_health
from include.orchestration.observe import observe_job, recently_running_queries
from include.orchestration.purge import execute_purge, folder_is_locked, hold_folder_lock, plan_purge
from include.orchestration.releases import ReleaseStore
from include.orchestration.supervision import failures_within, read_exits
from include.settings import REPO_ROOT

log = logging.getLogger(__name__)
FAILURE_XCOM_KEY = "failure_reason"


@contextmanager
def _observer(config: StreamOpsConfig) -> Iterator[Callable[[], JobObservation]]:
    bootstrap = kafka_bootstrap()
    with closing(postgres_connection(WAREHOUSE_CONN_ID)) as warehouse:
        yield lambda: observe_job(config.checkpoint, config.query_name, warehouse, bootstrap,
                                  config.settings.kafka_topic, config.pg_schema)


@contextmanager
def failure_reason_to_xcom(ti) -> Iterator[None]:
    """Push a failing step's message to XCom before it propagates, for the deploy's restore step to report."""
    try:
        yield
    except Exception as error:
        ti.xcom_push(key=FAILURE_XCOM_KEY, value=str(error))
        raise


def _last_exit_note(config: StreamOpsConfig) -> str:
    exits = read_exits(config.files)
    return f"; last driver exit: {exits[-1].cause} (log {exits[-1].log})" if exits else ""


# --- supervisor -------------------------------------------------------------------------------------------------

def ensure_release() -> dict:
    """The release the supervisor will submit; on first use, the working tree packaged as `tree-<digest>`."""
    config = StreamOpsConfig.load()
    store = ReleaseStore(config.releases_root)
    release = store.current(config.query_name)
    if release is None:
        release = store.build_tree(REPO_ROOT)
        store.promote(config.query_name, release.version)
        log.info("no release selected for %s yet: packaged the working tree as %s", config.query_name,
                 release.version)
    return {"version": release.version, "application": str(release.application), "py_files": str(release.py_files)}


# --- watchdog ---------------------------------------------------------------------------------------------------

def watchdog_assess() -> dict:
    config = StreamOpsConfig.load()
    with _observer(config) as observe:
        observation = observe()
    verdict = classify_job_health(observation, config.health)
    log.info("query %s is %s: %s", config.query_name, verdict.state.value, verdict.reason)
    return {"state": verdict.state.value, "reason": verdict.reason, "lag": observation.lag,
            "observed_at": observation.now.isoformat()}


def watchdog_check_failures() -> dict:
    """Fail the run when the driver failed repeatedly within the window (crashes and forced restarts), naming the
    causes read from the driver logs, the latest first."""
    config = StreamOpsConfig.load()
    now = dt.datetime.now(dt.timezone.utc)
    recent = failures_within(read_exits(config.files), now, config.failure_window)
    if len(recent) >= config.max_failures:
        counts = Counter(e.cause for e in recent)
        latest_first = dict.fromkeys(e.cause for e in reversed(recent))
        listed = "; ".join(f"{cause} (x{counts[cause]})" if counts[cause] > 1 else cause for cause in latest_first)
        raise AirflowFailException(
            f"query {config.query_name}: {len(recent)} driver failures in the last {config.failure_window} "
            f"(limit {config.max_failures}); latest cause: {recent[-1].cause} (version {recent[-1].version}, "
            f"log {recent[-1].log}); all causes: {listed}")
    return {"failures_in_window": len(recent)}


def watchdog_recover(assessment: dict) -> dict:
    """Stalled or dead: stop what is left and have the supervisor resubmit, then wait until it is healthy."""
    if not Health(assessment["state"]).needs_restart:
        return {"action": "none", "state": assessment["state"]}
    config = StreamOpsConfig.load()
    with _observer(config) as observe:
        # Judged again: the supervisor may have brought the job back since the assessment.
        verdict = classify_job_health(observe(), config.health)
        if not verdict.state.needs_restart:
            log.info("recovered on its own since the assessment: %s", verdict.reason)
            return {"action": "none", "state": verdict.state.value}
        try:
            request = restart_driver(config.files, "watchdog", f"{verdict.state.value}: {verdict.reason}",
                                     failure=True, grace=config.stop_grace_seconds, force=True)
            healthy = wait_until_healthy(config.files, observe, config.health, since=request.at,
                                         timeout=config.recovery_timeout)
        except (NoSupervisor, NotHealthy) as error:
            raise AirflowException(f"query {config.query_name} was {verdict.state.value} ({verdict.reason}) and "
                                   f"did not recover: {error}{_last_exit_note(config)}") from error
    log.info("query %s restarted: driver pid %s (version %s) %s after %.0f s", config.query_name, healthy.pid,
             healthy.version, healthy.verdict.state.value, healthy.waited_seconds)
    return {"action": "restarted", "was": verdict.state.value, "reason": verdict.reason, "pid": healthy.pid,
            "version": healthy.version, "waited_seconds": round(healthy.waited_seconds, 1)}


# --- checkpoint purge -------------------------------------------------------------------------------------------

def purge_checkpoints(dry_run: bool) -> dict:
    config = StreamOpsConfig.load()
    with closing(postgres_connection(WAREHOUSE_CONN_ID)) as warehouse:
        running = recently_running_queries(warehouse, config.retention, config.pg_schema)
    live = {config.query_name} | running
    plan = plan_purge(config.checkpoint_root, live, config.retention, dt.datetime.now(dt.timezone.utc),
                      folder_is_locked)
    lines = [f"{c.name:<40} {c.bytes:>14,} bytes  last change {c.newest_change:%Y-%m-%d %H:%M}" for c in plan.remove]
    lines += [f"{name:<40} kept: {why}" for name, why in plan.keep.items()]
    log.info("checkpoint root %s, retention %s, live queries %s\n%s", config.checkpoint_root, config.retention,
             sorted(live), "\n".join(lines) or "(empty)")
    if dry_run:
        log.info("dry run: %s folders, %s bytes would be freed", len(plan.remove), f"{plan.bytes:,}")
        return {"dry_run": True, **plan.as_dict()}
    result = execute_purge(plan, hold_folder_lock)
    log.info("removed %s folders, %s bytes freed; skipped %s", len(result.removed), f"{result.bytes_freed:,}",
             result.skipped or "none")
    return {"dry_run": False, **result.as_dict()}


# --- deploy -----------------------------------------------------------------------------------------------------

def deploy_package(version: str) -> dict:
    """Package the working tree as `version` (kept as is if it exists); note what runs now."""
    config = StreamOpsConfig.load()
    store = ReleaseStore(config.releases_root)
    release = store.build(version, REPO_ROOT)
    previous = store.current(config.query_name)
    return {"version": release.version, "digest": release.manifest["digest"],
            "previous": previous.version if previous else None}


def deploy_switch(version: str) -> dict:
    """Point the query at `version` and restart its driver on the same checkpoint (the supervisor submits)."""
    config = StreamOpsConfig.load()
    holder = config.files.driver_lock.holder()
    store = ReleaseStore(config.releases_root)
    if holder and holder.version == version and store.current(config.query_name).version == version:
        return {"since": holder.started_at.isoformat(), "restarted": False}
    require_supervisor(config.files)
    store.promote(config.query_name, version)
    request = restart_driver(config.files, "deploy", f"deploying {version}", failure=False,
                             grace=config.stop_grace_seconds, trial=True)
    return {"since": request.at.isoformat(), "restarted": True}


def deploy_wait_healthy(version: str, since: str) -> dict:
    config = StreamOpsConfig.load()
    with _observer(config) as observe:
        healthy = wait_until_healthy(config.files, observe, config.health, since=dt.datetime.fromisoformat(since),
                                     timeout=config.recovery_timeout, version=version, fail_fast=True)
    return {"version": healthy.version, "pid": healthy.pid, "state": healthy.verdict.state.value,
            "waited_seconds": round(healthy.waited_seconds, 1)}


def deploy_restore(version: str, previous: str | None, reason: str) -> NoReturn:
    """After a failed step: put `previous` back if `version` was switched in, then fail the run with the reason."""
    config = StreamOpsConfig.load()
    store = ReleaseStore(config.releases_root)
    current = store.current(config.query_name)
    if current is None or current.version != version or previous in (None, version):
        raise AirflowFailException(f"deploy of {version} refused: {reason}; "
                                   f"{current.version if current else 'nothing'} left in place")
    store.promote(config.query_name, previous)
    try:
        request = restart_driver(config.files, "deploy", f"restoring {previous} after {version} failed",
                                 failure=False, grace=config.stop_grace_seconds)
    except NoSupervisor as error:
        raise AirflowFailException(f"deploy of {version} failed: {reason}; {previous} is selected again but "
                                   f"nothing runs it: {error}") from error
    with _observer(config) as observe:
        try:
            healthy = wait_until_healthy(config.files, observe, config.health, since=request.at,
                                         timeout=config.recovery_timeout, version=previous)
        except NotHealthy as error:
            raise AirflowFailException(f"deploy of {version} failed: {reason}; {previous} was restored but is not "
                                       f"healthy: {error}") from error
    raise AirflowFailException(f"deploy of {version} failed: {reason}; restored {previous} "
                               f"(driver pid {healthy.pid} {healthy.verdict.state.value})")
