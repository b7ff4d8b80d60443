"""Local stack control: `python -m stack {fetch,up,down,status,schema,standin,env,airflow}`.

`up` is idempotent and serialised by a lock file, so any number of callers (make targets, tests, people) can
run it; `down` stops only processes whose pid this stack recorded when it started them.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from include.settings import REPO_ROOT, SettingsError, load_settings
from stack.services import (Health, Kafka, Postgres, StackError, airflow_command, airflow_services, all_services,
                            ensure_generated_secrets, init_airflow, java_home, wait_until)

log = logging.getLogger("stack")


def state_dir_from_env() -> Path:
    return Path(os.environ.get("PIPELINE_STATE_DIR", REPO_ROOT / ".state"))


@contextmanager
def stack_lock(state_dir: Path):
    lock_path = state_dir / "run" / "stack.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def apply_schema(settings) -> None:
    from elasticsearch import Elasticsearch

    from include.connections import warehouse_session
    from include.schema import apply_sql, ensure_indices, warehouse_ddl

    with warehouse_session(settings) as connection:
        apply_sql(connection, warehouse_ddl())
    apply_standin_schema(settings)
    es = Elasticsearch(settings.es_url, request_timeout=30)
    ensure_indices(es)
    es.close()


def apply_standin_schema(settings) -> None:
    from include.connections import source_session
    from stack.standin import apply_standin

    with source_session(settings) as connection:
        apply_standin(connection)


def up(args) -> int:
    state_dir = state_dir_from_env()
    with stack_lock(state_dir):
        ensure_generated_secrets(state_dir)
        settings = load_settings()
        java_home()
        services = all_services(settings, spark_cluster=args.spark_cluster)
        started = time.monotonic()
        for service in services:
            service.fetch()
        log.info("artifacts ready in %.0f s", time.monotonic() - started)
        for service in services:
            service.start()
        for service in services:
            wait_until(lambda s=service: s.health().healthy, args.timeout, service.name,
                       getattr(service, "log_path", None))
        next(s for s in services if isinstance(s, Postgres)).create_databases()
        next(s for s in services if isinstance(s, Kafka)).create_topic()
        apply_schema(settings)
        if not args.no_airflow:
            init_airflow(settings)
        log.info("stack up in %.0f s", time.monotonic() - started)
    return print_status(settings)


def down(_args) -> int:
    state_dir = state_dir_from_env()
    with stack_lock(state_dir):
        settings = load_settings()
        # Reverse order: consumers of Postgres and Kafka go first.
        stop_airflow(settings)
        for service in reversed(all_services(settings, spark_cluster=True)):
            service.stop()
    log.info("stack stopped")
    return 0


def airflow_ui(args) -> int:
    """Start the Airflow API server (UI), scheduler, DAG processor and triggerer in the background."""
    with stack_lock(state_dir_from_env()):
        settings = load_settings()
        init_airflow(settings)
        components = airflow_services(settings)
        for component in components:
            component.start()
        for component in components:
            wait_until(lambda c=component: c.health().healthy, args.timeout, component.name, component.log_path)
    api = components[0]
    print(f"Airflow UI: {api.url}  (login: admin / {api.admin_password()})")
    print("Stop it with `make down` (stops the whole stack) or `python -m stack airflow-down`.")
    return 0


def stop_airflow(settings) -> None:
    """Stop Airflow's processes side by side: each may take its time to end its work (the scheduler waits for its
    running tasks), and none needs another to stop."""
    components = airflow_services(settings)
    with ThreadPoolExecutor(len(components)) as pool:
        list(pool.map(lambda component: component.stop(), components))


def airflow_down(_args) -> int:
    with stack_lock(state_dir_from_env()):
        stop_airflow(load_settings())
    return 0


def print_status(settings=None) -> int:
    settings = settings or load_settings()
    rows: list[Health] = [service.health() for service in all_services(settings)]
    print(f"{'service':<14} {'state':<9} {'version':<10} {'pid':>8} {'rss MB':>8}  detail")
    for row in rows:
        state = "healthy" if row.healthy else "DOWN"
        print(f"{row.name:<14} {state:<9} {row.version:<10} {row.pid or '-':>8} {row.rss_mb:>8.0f}  {row.detail}")
    print(f"{'total':<14} {'':<9} {'':<10} {'':>8} {sum(r.rss_mb for r in rows):>8.0f}")
    return 0 if all(row.healthy for row in rows) else 1


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for chatty in ("kafka", "elastic_transport"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="fetch artifacts, start every service, apply the schema")
    up_parser.add_argument("--timeout", type=float, default=180, help="seconds each service has to become healthy")
    up_parser.add_argument("--no-airflow", action="store_true", help="skip the Airflow metadata migration")
    up_parser.add_argument("--spark-cluster", action="store_true",
                           help="also start the local Spark standalone cluster (a master and PIPELINE_SPARK_WORKERS "
                                "workers); implied when PIPELINE_SPARK_MASTER is its URL")
    commands.add_parser("down", help="stop every service this stack started")
    commands.add_parser("status", help="health, version, pid and memory of each service; exit 1 if any is down")
    ui_parser = commands.add_parser("airflow-ui", help="start Airflow's UI, scheduler, DAG processor, triggerer")
    ui_parser.add_argument("--timeout", type=float, default=180)
    commands.add_parser("airflow-down", help="stop the Airflow processes started by airflow-ui")
    commands.add_parser("fetch", help="download Kafka, Elasticsearch and the Spark jars without starting anything")
    commands.add_parser("schema", help="apply the warehouse, stand-in and index schema")
    commands.add_parser("standin", help="create the Supabase stand-in's tables in PIPELINE_PG_SOURCE_DB (the "
                                        "stack's own database, never a hosted project)")
    commands.add_parser("env", help="print shell exports for airflow commands against the local stack")
    airflow_parser = commands.add_parser("airflow", help="run an airflow command against the local stack")
    airflow_parser.add_argument("airflow_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return up(args)
        if args.command == "down":
            return down(args)
        if args.command == "airflow-ui":
            return airflow_ui(args)
        if args.command == "airflow-down":
            return airflow_down(args)
        if args.command == "fetch":
            ensure_generated_secrets(state_dir_from_env())
            for service in all_services():
                service.fetch()
            return 0
        settings = load_settings()
        if args.command == "status":
            return print_status(settings)
        if args.command == "schema":
            apply_schema(settings)
            return 0
        if args.command == "standin":
            apply_standin_schema(settings)
            return 0
        if args.command == "env":
            for name, value in settings.airflow_environment().items():
                print(f"export {name}={shlex.quote(value)}")
            return 0
        airflow_args = args.airflow_args[1:] if args.airflow_args[:1] == ["--"] else args.airflow_args
        return airflow_command(settings, airflow_args).returncode
    except (StackError, SettingsError) as error:
        log.error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
