"""SupervisedSparkSubmitOperator: keeps one streaming driver running through spark-submit, under the driver lock.

A SparkSubmitOperator (connection `spark_default`, client deploy mode) whose task is the supervisor: it holds the
supervisor lock for its lifetime, submits the release the pointer names, and when the driver ends it records the
exit (with the cause read from the driver's log) and resubmits: at once after a requested restart (deploy,
watchdog), after an exponential backoff after a crash, not before the deploy decides when a freshly deployed
version crashes, and not at all once crashes within the window reach the limit (the task fails with the cause;
Airflow retries it). Every spark-submit runs under the driver-lock wrapper, so the driver JVM itself holds the
checkpoint's lock. on_kill stops the driver and everything in its session.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Sequence

from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from include.connections import SPARK_CONN_ID
from include.orchestration import driver_lock
from spark.job_spec import AVAILABLE_NOW, PROCESSING_TIME, TRIGGER_KINDS

DRIVER_LOGS_KEPT = 20


class LockedSparkSubmitHook(SparkSubmitHook):
    """spark-submit started through the driver-lock wrapper; its output also goes to a per-driver log file and
    a tail kept in memory, from which the failure cause is read."""

    def __init__(self, *, lock_path: Path, version: str, driver_log: Path, working_dir: Path, **kwargs) -> None:
        self.lock_path = lock_path
        self.version = version
        self.driver_log = driver_log
        self.working_dir = working_dir
        self.output_tail: deque[str] = deque(maxlen=300)
        super().__init__(**kwargs)

    def _build_spark_submit_command(self, application: str) -> list[str]:
        return [sys.executable, driver_lock.__file__, "--lock", str(self.lock_path), "--version", self.version,
                "--", *super()._build_spark_submit_command(application)]

    def submit(self, application: str = "", **kwargs) -> str | None:
        # PySpark starts its Python workers with `python -m`, which puts the current directory first on their
        # path, ahead of the --py-files zip: started from a checkout, the executors would run the checkout's
        # modules instead of the release's. The release's own folder holds no importable package.
        return super().submit(application, cwd=self.working_dir, **kwargs)

    def _process_spark_submit_log(self, itr) -> None:
        self.driver_log.parent.mkdir(parents=True, exist_ok=True)
        with self.driver_log.open("a", buffering=1) as log_file:
            def tee():
                for line in itr:
                    log_file.write(line)
                    self.output_tail.append(line.rstrip("\n"))
                    yield line

            super()._process_spark_submit_log(tee())

    @property
    def returncode(self) -> int | None:
        return None if self._submit_sp is None else self._submit_sp.returncode


class SupervisedSparkSubmitOperator(SparkSubmitOperator):
    """Supervise the streaming job named by the configuration (include/orchestration/config.py).

    :param trigger: `processing-time` (run until stopped; resubmit when the driver ends) or `available-now`
        (process what is in Kafka, then finish: catch-up runs and tests).
    """

    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "trigger")

    def __init__(self, *, trigger: str = PROCESSING_TIME, conn_id: str = SPARK_CONN_ID, **kwargs) -> None:
        super().__init__(conn_id=conn_id, **kwargs)
        self.trigger = trigger
        self._ops = None
        self._release = None
        self._driver_log: Path | None = None
        self._stopping = False

    def _get_hook(self) -> LockedSparkSubmitHook:
        return LockedSparkSubmitHook(
            lock_path=self._ops.files.driver_lock.path, version=self._release.version, driver_log=self._driver_log,
            working_dir=self._release.folder,
            conf=self.conf, conn_id=self._conn_id, py_files=self.py_files, jars=self.jars, name=self.name,
            application_args=self.application_args, env_vars=self.env_vars, driver_memory=self._driver_memory,
            verbose=self._verbose, deploy_mode=self._deploy_mode,
        )

    def execute(self, context) -> dict[str, Any]:
        from include.orchestration.config import StreamOpsConfig
        from include.orchestration.driver_lock import LockBusy

        if self.trigger not in TRIGGER_KINDS:
            raise AirflowFailException(f"trigger {self.trigger!r} is not one of {TRIGGER_KINDS}")
        self._ops = StreamOpsConfig.load()
        supervisor_lock = self._ops.files.supervisor_lock
        try:
            supervisor_lock.acquire(f"supervisor {context['run_id']}", attempts=1)
        except LockBusy as busy:
            raise AirflowFailException(f"another supervisor owns query {self._ops.query_name}: {busy}") from busy
        try:
            return self._supervise(context)
        finally:
            supervisor_lock.release()

    def _supervise(self, context) -> dict[str, Any]:
        from include.orchestration.processes import stop_driver
        from include.orchestration.releases import ReleaseStore
        from include.orchestration.supervision import (append_exit, backoff_seconds, failures_within,
                                                       is_trial_crash, latest_restart_request, read_exits)

        ops = self._ops
        store = ReleaseStore(ops.releases_root)
        while True:
            if self._stopping:
                raise AirflowException(f"supervision of {ops.query_name} stopped: the task was killed")
            # We hold the supervisor lock, so a driver still holding the checkpoint is an orphan of a supervisor
            # that died; it and any leftovers go before a new driver starts.
            stop_driver(ops.files.driver_lock, ops.stop_grace_seconds)
            self._release = store.current(ops.query_name)
            if self._release is None:
                raise AirflowFailException(f"no release selected for query {ops.query_name}: run the release task")
            driver_exit = self._run_driver(context)
            append_exit(ops.files, driver_exit)
            self._prune_driver_logs()
            self.log.info("driver pid %s (version %s) ended after %.0f s: %s", driver_exit.pid,
                          driver_exit.version, (driver_exit.ended_at - driver_exit.started_at).total_seconds(),
                          driver_exit.cause)
            if self.trigger == AVAILABLE_NOW and driver_exit.exit_code == 0:
                return {"version": driver_exit.version, "pid": driver_exit.pid, "log": str(self._driver_log)}
            if self._stopping or not driver_exit.failure or driver_exit.requested_by:
                # Asked for (deploy, or the watchdog, which waits for the restart and counts it itself): at once.
                continue
            exits = read_exits(ops.files)
            crashes = [e for e in failures_within(exits, driver_exit.ended_at, ops.failure_window)
                       if e.requested_by is None]
            if len(crashes) >= ops.max_failures:
                raise AirflowException(
                    f"{len(crashes)} driver crashes within {ops.failure_window}; last: {driver_exit.cause} "
                    f"(driver log {driver_exit.log})")
            if is_trial_crash(driver_exit, latest_restart_request(ops.files), exits):
                # A version that crashes right after its deploy is not retried: the deploy restores the previous.
                self.log.warning("version %s crashed right after its deploy (%s); waiting up to %s for the deploy's "
                                 "restore", driver_exit.version, driver_exit.cause, ops.recovery_timeout)
                self._wait_before_resubmit(driver_exit.ended_at, ops.recovery_timeout.total_seconds())
                continue
            delay = backoff_seconds(len(crashes), ops.backoff_seconds, ops.backoff_max_seconds)
            self.log.warning("driver failed (%s); resubmitting in %.0f s", driver_exit.cause, delay)
            self._wait_before_resubmit(driver_exit.ended_at, delay)

    def _run_driver(self, context):
        from include.orchestration.config import driver_environment, job_arguments, spark_conf
        from include.orchestration.supervision import DriverExit, judge_exit, restart_requested_since
        from spark.job_spec import connector_jars

        ops, release = self._ops, self._release
        started = dt.datetime.now(dt.timezone.utc)
        self._driver_log = ops.files.logs / f"{started:%Y%m%dT%H%M%S}-{release.version}.log"
        self.application = str(release.application)
        self.py_files = str(release.py_files)
        self.jars = ",".join(str(jar) for jar in connector_jars(ops.settings))
        self.application_args = job_arguments(ops, available_now=self.trigger == AVAILABLE_NOW)
        self.conf = {**spark_conf(ops), **(self.conf or {})}
        self.env_vars = driver_environment(ops)
        self._driver_memory = self._driver_memory or ops.settings.spark_driver_memory
        self.name = f"{ops.query_name}-{release.version}"
        self._hook = hook = self._get_hook()
        if hook._connection["deploy_mode"] == "cluster":
            raise AirflowFailException("the supervisor runs drivers in client mode: the driver lock must be held "
                                       "by the driver process on this host")
        try:
            hook.submit(self.application)
        except AirflowException:
            if hook.returncode is None:
                raise  # spark-submit never ran: not a driver exit
        ended = dt.datetime.now(dt.timezone.utc)
        request = restart_requested_since(ops.files, started)
        cause, failure = judge_exit(hook.returncode, available_now=self.trigger == AVAILABLE_NOW,
                                    killed=self._stopping, request=request, output=hook.output_tail)
        return DriverExit(release.version, hook._submit_sp.pid, started, ended, hook.returncode, cause, failure,
                          request.requested_by if request else None, str(self._driver_log))

    def _wait_before_resubmit(self, since: dt.datetime, delay: float) -> None:
        """Sleep `delay` seconds, cut short by a restart request (the watchdog asking for the job back now)."""
        from include.orchestration.supervision import restart_requested_since

        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self._stopping:
            if restart_requested_since(self._ops.files, since):
                self.log.info("restart requested while backing off: resubmitting now")
                return
            time.sleep(1)

    def _prune_driver_logs(self) -> None:
        logs = sorted(self._ops.files.logs.glob("*.log"))
        for old in logs[:-DRIVER_LOGS_KEPT]:
            old.unlink()

    def on_kill(self) -> None:
        from include.orchestration.processes import stop_driver

        self._stopping = True
        if self._ops is not None:
            outcome = stop_driver(self._ops.files.driver_lock, self._ops.stop_grace_seconds)
            self.log.info("on_kill: stopped driver pid %s with %s", outcome.pid, outcome.signal)
