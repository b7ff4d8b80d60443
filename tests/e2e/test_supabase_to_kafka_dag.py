"""`airflow dags test supabase_to_kafka` on the local stack, with the poller and with cdc: leads written to the
Supabase source reach the topic. The DAG runs as deployed, pointed through its settings at databases and a
topic this test owns."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from kafka import KafkaConsumer

from include.entities import LEAD
from include.schema import quote_ident
from include.settings import REPO_ROOT


def test_dags_test_with_the_poller_publishes_new_leads_and_refuses_sessions(settings, isolated_stack, pg_connect):
    """The poller maps one task per entity: leads are published; chat_sessions, which has no version column, fails
    its task at once (no retries) naming the setting that would extract it."""
    source = pg_connect(isolated_stack["PIPELINE_PG_SOURCE_DB"])
    lead_ids = [row[0] for row in source.execute(
        f"INSERT INTO public.{quote_ident(LEAD.source_table)} (nome, email) "
        "SELECT 'Teste E2E ' || n, 'e2e' || n || '@example.com.br' FROM generate_series(1, 3) n RETURNING id::text"
    ).fetchall()]
    source.commit()

    run = subprocess.run([sys.executable, "-m", "stack", "airflow", "--", "dags", "test", "supabase_to_kafka"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, **isolated_stack, "PIPELINE_EXTRACT_SOURCE": "postgres"})

    output = run.stdout + run.stderr
    assert "DagRun Finished: dag_id=supabase_to_kafka" in output and "state=failed" in output, output[-4000:]
    assert "rendered_map_index='lead'" in output, "no mapped task ran for lead"
    assert ("AirflowFailException: entity 'chat_session': its table 'chat_sessions' has no version column"
            in output and "PIPELINE_EXTRACT_SOURCE=cdc" in output), output[-4000:]
    consumer = KafkaConsumer(isolated_stack["PIPELINE_KAFKA_TOPIC"], bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=20_000)
    published = {}
    for message in consumer:
        published[message.key.decode()] = json.loads(message.value)
        if len(published) == len(lead_ids):
            break
    consumer.close()
    assert set(published) == set(lead_ids)
    assert all(m["tipo_evento"] == "lead" and m["nome"].startswith("Teste E2E") for m in published.values())
    cursor = pg_connect(isolated_stack["PIPELINE_PG_WAREHOUSE_DB"]).execute(
        "SELECT count(*) FROM extract_cursors WHERE entity = %s", (LEAD.name,)).fetchone()
    assert cursor == (1,), "the run must record its cursor in the warehouse it was pointed at"


def test_dags_test_in_cdc_mode_snapshots_the_source_through_the_slot(settings, isolated_stack, pg_connect):
    """PIPELINE_EXTRACT_SOURCE=cdc: the DAG's one task creates the publication and the slot from the Airflow
    connections and publishes the source's rows as its initial snapshot, with their source position."""
    import uuid

    from include.extract.cdc import drop_slot

    slot = f"test_{uuid.uuid4().hex[:12]}"
    environment = {**os.environ, **isolated_stack, "PIPELINE_EXTRACT_SOURCE": "cdc",
                   "PIPELINE_EXTRACT_CDC_SLOT": slot, "PIPELINE_EXTRACT_CDC_PUBLICATION": slot}
    source = pg_connect(isolated_stack["PIPELINE_PG_SOURCE_DB"], autocommit=True)
    lead_ids = {row[0] for row in source.execute(
        f"INSERT INTO public.{quote_ident(LEAD.source_table)} (nome) "
        "SELECT 'Teste CDC ' || n FROM generate_series(1, 3) n RETURNING id::text").fetchall()}
    try:
        run = subprocess.run([sys.executable, "-m", "stack", "airflow", "--", "dags", "test", "supabase_to_kafka"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env=environment)
    finally:
        # A database with a replication slot cannot be dropped.
        drop_slot(source, slot)

    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "task_id=extract_changes" in output and "DagRun Finished: dag_id=supabase_to_kafka" in output, \
        output[-4000:]
    consumer = KafkaConsumer(isolated_stack["PIPELINE_KAFKA_TOPIC"], bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=20_000)
    published = {}
    for message in consumer:
        published[message.key.decode()] = json.loads(message.value)
        if len(published) == len(lead_ids):
            break
    consumer.close()
    assert set(published) == lead_ids
    assert all(m["nome"].startswith("Teste CDC ") and m["source_position"] for m in published.values())
    recorded = pg_connect(isolated_stack["PIPELINE_PG_WAREHOUSE_DB"]).execute(
        "SELECT snapshot_done FROM extract_cdc_slots WHERE slot_name = %s", [slot]).fetchone()
    assert recorded == (True,)
