"""`airflow dags test supabase_to_kafka` on the local stack: both mapped tasks succeed and leads written to the
Supabase stand-in reach the real topic.

This is the deployed path, so it uses the real objects (`public.leads`, topic `eventos`, the warehouse's
`extract_cursors`). Its leads are marked with a uuid and deleted afterwards; their deletions stay captured in
`public.deleted_records`, so the next run publishes their tombstones and downstream forgets them too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from include.entities import LEAD
from include.extract.service import connect_postgres
from include.schema import quote_ident
from include.settings import REPO_ROOT

LEADS = f"{quote_ident('public')}.{quote_ident(LEAD.source_table)}"


@pytest.fixture
def marked_leads(settings):
    """Three leads in the stand-in's public table, named with a uuid marker; deleted afterwards."""
    marker = uuid.uuid4().hex
    with connect_postgres(settings, settings.pg_source_db) as connection:
        ids = [row[0] for row in connection.execute(
            f"INSERT INTO {LEADS} (nome, email) SELECT 'Teste E2E ' || n || ' ' || %(marker)s, "
            f"'e2e' || n || '.' || %(marker)s || '@example.com.br' FROM generate_series(1, 3) n RETURNING id::text",
            {"marker": marker}).fetchall()]
        connection.commit()
        yield ids
        connection.execute(f"DELETE FROM {LEADS} WHERE id = ANY(%s::uuid[])", [ids])
        connection.commit()


def _end_offsets(settings) -> dict:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, client_id="pytest-e2e")
    try:
        topic = settings.kafka_topic
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return consumer.end_offsets(partitions)
    finally:
        consumer.close()


def _keys_since(settings, start: dict) -> dict[str, dict]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             client_id="pytest-e2e")
    try:
        consumer.assign(list(start))
        for partition, offset in start.items():
            consumer.seek(partition, offset)
        end = consumer.end_offsets(list(start))
        found = {}
        while any(consumer.position(tp) < end[tp] for tp in start):
            for batch in consumer.poll(timeout_ms=1000).values():
                found.update((m.key.decode(), json.loads(m.value)) for m in batch)
        return found
    finally:
        consumer.close()


def test_dags_test_runs_every_entity_and_publishes_new_leads(settings, marked_leads):
    start = _end_offsets(settings)

    run = subprocess.run([sys.executable, "-m", "stack", "airflow", "--", "dags", "test", "supabase_to_kafka"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)

    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "state=success" in output and "DagRun Finished: dag_id=supabase_to_kafka" in output, output[-4000:]
    for entity in ("lead", "chat_session"):
        assert f"rendered_map_index='{entity}'" in output, f"no mapped task ran for {entity}"
    published = _keys_since(settings, start)
    for lead_id in marked_leads:
        assert published[lead_id]["tipo_evento"] == "lead" and published[lead_id]["nome"].startswith("Teste E2E")
