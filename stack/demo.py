"""`make demo`: the whole pipeline once, end to end, on the local stack, through Airflow.

1. `warehouse_schema` (airflow dags test): warehouse tables and indices (`make up` created the stand-in's tables).
2. The Supabase stand-in: demo leads and chat sessions on the first run; on later runs, "activity" (updates,
   erasures, new rows), so the incremental extraction has changes, and only changes, to find.
3. `supabase_to_kafka` (airflow dags test) reading the stand-in's write-ahead log (`PIPELINE_EXTRACT_SOURCE=cdc`;
   its first run copies the existing rows under the slot's snapshot), then a few generic events through
   `inject_event`.
4. `stream_supervisor` with `trigger=available-now` (airflow dags test) of this checkout's job, packaged and
   selected as the release `tree-<digest>`: the Spark job drains the topic into Postgres and Elasticsearch, then
   ends.
5. A report: what the extraction published, rows per table, documents per index, dead letters, DQ verdict.

Exits non-zero when a step fails or the verdict does not pass. Safe to run any number of times.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

from include.settings import load_settings
from stack.services import airflow_command
from stack.services import airflow_services

log = logging.getLogger("demo")
DEMO_LEADS = 500
DEMO_EVENTS = (("pagina_visitada", 1), ("formulario_enviado", 1), ("compra_concluida", 1490.90))
DEMO_EXTRACT_SOURCE = "cdc"


def run_dag(settings, dag_id: str, conf: dict | None = None) -> None:
    args = ["dags", "test", dag_id] + (["--conf", json.dumps(conf)] if conf else [])
    log_path = settings.state_dir / "logs" / f"demo-{dag_id}.log"
    started = time.monotonic()
    with log_path.open("w") as output:
        result = airflow_command(settings, args, stdout=output, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"airflow dags test {dag_id} failed (log: {log_path}):\n{tail}")
    print(f"  {dag_id}: success in {time.monotonic() - started:.0f} s (log: {log_path.relative_to(settings.state_dir.parent)})")


def topic_size(settings) -> int:
    from include.orchestration.observe import kafka_end_offsets

    return sum(kafka_end_offsets(settings.kafka_bootstrap, settings.kafka_topic).values())


def prepare_source(settings) -> tuple[str, int | None]:
    """Seed the stand-in, or change it; returns a description and the number of rows changed (None: seeded)."""
    from include.connections import pg_session
    from include.entities import LEAD
    from include.extract.demo_data import DemoSize, activity, generate
    from include.schema import quote_ident

    with pg_session(settings, settings.pg_source_db) as connection:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM public.{quote_ident(LEAD.source_table)}")
            (leads,) = cursor.fetchone()
        connection.rollback()
        if leads == 0:
            created = generate(connection, DemoSize(leads=DEMO_LEADS))
            return f"seeded the Supabase stand-in: {created}", None
        changed = activity(connection, "public", update_share=0.05, delete=3, insert=10)
        return f"activity in the Supabase stand-in since the last run: {changed}", sum(changed.values())


def select_checkout_release() -> str:
    """Package this checkout's job and select it: the demo shows the code it is run from, even where an earlier
    run or a deploy selected another version (the supervisor submits whatever release is selected)."""
    from include.orchestration.config import StreamOpsConfig
    from include.orchestration.releases import ReleaseStore
    from include.settings import REPO_ROOT

    config = StreamOpsConfig.load()
    store = ReleaseStore(config.releases_root)
    release = store.build_tree(REPO_ROOT)
    store.promote(config.query_name, release.version)
    return release.version


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    # For this process and the `airflow dags test` runs it starts (they inherit its environment).
    os.environ["PIPELINE_EXTRACT_SOURCE"] = DEMO_EXTRACT_SOURCE
    settings = load_settings()
    if any(component.running() for component in airflow_services(settings)):
        # Its scheduler runs the pipeline itself: its stream_supervisor owns the job, and the demo's driver would
        # find the checkpoint taken.
        print("Airflow is running (`make airflow`) and runs the pipeline by itself; stop it first with "
              "`.state/venv/bin/python -m stack airflow-down`, or trigger the DAGs from its UI.", file=sys.stderr)
        return 2
    print("== 1. schema")
    run_dag(settings, "warehouse_schema")
    print("== 2. source")
    description, changed = prepare_source(settings)
    print("  " + description)
    print("== 3. extraction and events")
    before = topic_size(settings)
    run_dag(settings, "supabase_to_kafka")
    extracted = topic_size(settings) - before
    print(f"  supabase_to_kafka ({settings.extract_source}) published {extracted} messages")
    if changed is not None:
        # What the source changed, beside what the extraction published: the poller adds its lookback window's
        # re-reads, cdc one message per committed change, a first cdc run every existing row (its snapshot).
        print(f"  {changed} source rows changed since the last run (each deletion is one tombstone)")
    from include.extract.service import inject_event

    for evento, valor in DEMO_EVENTS:
        inject_event(evento, valor, "demo@exemplo.com.br")
    print(f"  injected {len(DEMO_EVENTS)} generic events")
    print("== 4. streaming job (available-now)")
    print(f"  job version: {select_checkout_release()} (this checkout)")
    run_dag(settings, "stream_supervisor", {"trigger": "available-now"})
    print("== 5. report")
    from include.status import pipeline_status

    status = pipeline_status()
    print(status["table"])
    # The available-now run has ended by now, so the watchdog's view ("dead": no driver) is not news here.
    print(f"  dead letters: {status['dead_letters']}   Kafka lag: {status['kafka_lag']}   "
          f"last streaming batch: {status['heartbeat_age_seconds']:.0f} s ago")
    sinks_agree = all(row["postgres_rows"] == row["es_docs"] for row in status["counts"])
    print(f"  Postgres rows == Elasticsearch docs for every entity: {'yes' if sinks_agree else 'NO'}")
    print(f"  data-quality verdict: {'PASS' if status['dq_passed'] else 'FAIL'}"
          + "".join(f"\n    - {reason}" for reason in status["dq_reasons"]))
    for slot in status["cdc_slots"]:
        age = slot["confirm_age_seconds"]
        confirmed = "never confirmed by this pipeline" if age is None else f"last confirmed {age:.0f} s ago"
        print(f"  replication slot {slot['slot']}: {slot['retained_wal_bytes']} bytes of WAL held back, {confirmed}"
              + "".join(f"\n    - {problem}" for problem in slot["problems"]))
    api_port = settings.airflow_api_port
    print(f"\nAirflow UI: `make airflow`, then http://127.0.0.1:{api_port} (the login is printed there)."
          "\nMCP server: `.state/venv/bin/python -m include.pipeline_mcp` (see README).")
    return 0 if sinks_agree and status["dq_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
