"""A row one sink refuses for its data is refused by both and becomes a dead letter naming the sink; the rest of the
batch lands and Postgres == Elasticsearch afterwards. A sink's outage still fails the batch, before Postgres
commits, and the replay converges. Real Spark, Postgres and Elasticsearch, through the job's foreachBatch."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from include.entities import ENTITIES, LEAD
from include.schema import ensure_index, index_body
from spark import transforms as T
from spark.sinks.batch import MicroBatchSink
from spark.sinks.elastic import BulkItemError, ElasticsearchSink
from spark.sinks.postgres import PostgresSink
from tests.stream_support import T0, kafka_frame, lead_message

MAX_BYTES = 64 * 1024
HOUR = dt.timedelta(hours=1)
TOPIC = "eventos"


@pytest.fixture
def db(settings, pg_schema):
    connection = PostgresSink(settings, pg_schema).connect(autocommit=True)
    yield connection
    connection.close()


@pytest.fixture
def elastic(settings, es_prefix):
    return ElasticsearchSink(settings.es_url, index_prefix=es_prefix)


@pytest.fixture
def run(spark, settings, pg_schema, elastic, es):
    """Write literal messages as one batch at `start_offset` through the job's foreachBatch."""

    def write(values, start_offset: int, sink: ElasticsearchSink = elastic, batch_id: int = 0,
              postgres: PostgresSink | None = None):
        postgres = postgres or PostgresSink(settings, pg_schema)
        report = MicroBatchSink(postgres, sink, T.documents_of(MAX_BYTES)).write(
            kafka_frame(spark, values, start_offset=start_offset, topic=TOPIC), batch_id)
        es.indices.refresh(index=",".join(elastic.index_name(e) for e in ENTITIES))
        return report

    return write


class RecordingSink(PostgresSink):
    """The Postgres sink, recording every statement its merge sessions execute."""

    def __init__(self, *args):
        super().__init__(*args)
        self.statements: list[str] = []

    def connect(self, **kwargs):
        return Recording(super().connect(**kwargs), self.statements)


class Recording:
    def __init__(self, target, statements: list[str]):
        self._target, self._statements = target, statements

    def __getattr__(self, name):
        return getattr(self._target, name)

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._target, name, value)

    def __iter__(self):
        return iter(self._target)

    def __enter__(self):
        self._target.__enter__()
        return self

    def __exit__(self, *exc):
        return self._target.__exit__(*exc)

    def cursor(self, *args, **kwargs):
        return Recording(self._target.cursor(*args, **kwargs), self._statements)

    def execute(self, statement, *args, **kwargs):
        self._statements.append(str(statement))
        return self._target.execute(statement, *args, **kwargs)


def micros(timestamp: dt.datetime) -> int:
    return round(timestamp.timestamp() * 1_000_000)


def postgres_leads(db) -> dict[str, int]:
    return {record_id: micros(version) for record_id, version in db.execute("SELECT id::text, updated_at FROM leads")}


def elasticsearch_leads(es, index: str) -> dict[str, int]:
    hits = es.search(index=index, query={"match_all": {}}, size=10_000, version=True)["hits"]["hits"]
    return {hit["_id"]: hit["_version"] for hit in hits}


def dead_letters(db) -> list[tuple]:
    return db.execute("SELECT entity, reason, topic, kafka_partition, kafka_offset, raw_payload FROM dead_letters "
                      "ORDER BY kafka_offset").fetchall()


def test_documents_elasticsearch_refuses_are_dead_letters_and_keep_their_previous_version_in_both(
        db, es, elastic, run):
    # A stricter index than the registry's: nome_empresa is a number, so a text value is refused (400).
    body = index_body(LEAD, 0)
    body["mappings"]["properties"]["nome_empresa"] = {"type": "long"}
    es.indices.create(index=elastic.index_name(LEAD), settings=body["settings"], mappings=body["mappings"])
    for entity in (e for e in ENTITIES if e is not LEAD):
        ensure_index(es, entity, elastic.index_name(entity))

    kept, updated = lead_message(nome_empresa="1"), lead_message(nome_empresa="2")
    first = run([kept, updated], start_offset=0)
    assert first.merged.refused == {"postgres": 0, "elasticsearch": 0}

    refused_update = lead_message(id=kept["id"], updated_at=T0 + HOUR, nome_empresa="Ação & Cia")
    refused_new = lead_message(nome_empresa="texto")
    landing = [lead_message(nome_empresa=str(n)) for n in range(50)]
    second = [refused_update, lead_message(id=updated["id"], updated_at=T0 + HOUR, nome_empresa="20"),
              *landing[:25], refused_new, *landing[25:]]
    report = run(second, start_offset=100, batch_id=1)

    assert report.merged.refused == {"postgres": 0, "elasticsearch": 2}
    assert report.merged.dead_letters == 2
    letters = dead_letters(db)
    offsets = {100 + second.index(refused_update), 100 + second.index(refused_new)}
    assert {(entity, topic, partition, offset) for entity, _, topic, partition, offset, _ in letters} == {
        ("lead", TOPIC, 0, offset) for offset in offsets}
    for _, reason, *_ in letters:
        assert reason.startswith("sink_refused: elasticsearch: document_parsing_exception"), reason
    assert {json.loads(letter[5])["id"] for letter in letters} == {kept["id"], refused_new["id"]}

    in_postgres = postgres_leads(db)
    assert in_postgres == elasticsearch_leads(es, elastic.index_name(LEAD))
    assert len(in_postgres) == 2 + len(landing)
    assert in_postgres[kept["id"]] == micros(T0)  # its previous version, in both
    assert in_postgres[updated["id"]] == micros(T0 + HOUR)
    assert refused_new["id"] not in in_postgres
    assert db.execute("SELECT nome_empresa FROM leads WHERE id = %s", [kept["id"]]).fetchone() == ("1",)

    # A replay of the batch changes nothing and records each dead letter once.
    run(second, start_offset=100, batch_id=1)
    assert len(dead_letters(db)) == 2
    assert postgres_leads(db) == in_postgres


def test_a_row_postgres_refuses_is_isolated_and_the_rest_of_the_batch_lands_in_both(
        settings, pg_schema, db, es, elastic, run):
    elastic.ensure_indices(ENTITIES)
    refused = lead_message(nome="antes")
    run([refused], start_offset=0)
    # The test's own schema: a CHECK the message does not know about.
    db.execute("ALTER TABLE leads ADD CONSTRAINT nome_not_recusado CHECK (nome <> 'recusado')")

    batch = [lead_message() for _ in range(999)]
    batch.insert(617, lead_message(id=refused["id"], updated_at=T0 + HOUR, nome="recusado"))
    postgres = RecordingSink(settings, pg_schema)
    report = run(batch, start_offset=1_000, batch_id=1, postgres=postgres)

    assert report.merged.refused == {"postgres": 1, "elasticsearch": 0}
    # Found by bisection (about 2 log2(1000) statements, then the redo), not one statement per row.
    upserts = [s for s in postgres.statements if s.lstrip().startswith("-- Newest wins") and '"leads"' in s]
    assert 10 <= len(upserts) <= 2 * 10 + 3, len(upserts)
    assert report.merged.upserted["lead"] == 999
    [(entity, reason, topic, partition, offset, raw)] = dead_letters(db)
    assert (entity, topic, partition, offset) == ("lead", TOPIC, 0, 1_617)
    assert reason.startswith("sink_refused: postgres: 23514") and "nome_not_recusado" in reason, reason
    assert json.loads(raw)["nome"] == "recusado"

    in_postgres = postgres_leads(db)
    assert in_postgres == elasticsearch_leads(es, elastic.index_name(LEAD))
    assert len(in_postgres) == 1_000
    assert in_postgres[refused["id"]] == micros(T0)  # its previous version, in both
    assert es.get(index=elastic.index_name(LEAD), id=refused["id"])["_source"]["nome"] == "antes"


def test_an_elasticsearch_outage_fails_the_batch_before_postgres_commits_and_the_replay_converges(
        db, es, elastic, run):
    elastic.ensure_indices(ENTITIES)
    batch = [lead_message() for _ in range(300)]
    es.indices.close(index=elastic.index_name(LEAD))  # every item fails: the index, not the documents
    with pytest.raises(BulkItemError, match="index_closed_exception"):
        run(batch, start_offset=0, sink=dataclasses.replace(elastic, max_retries=1, initial_backoff=0.05))
    assert postgres_leads(db) == {}
    assert dead_letters(db) == []

    es.indices.open(index=elastic.index_name(LEAD), wait_for_active_shards=1)
    report = run(batch, start_offset=0)  # the replay
    assert report.merged.refused == {"postgres": 0, "elasticsearch": 0}
    in_postgres = postgres_leads(db)
    assert len(in_postgres) == 300
    assert in_postgres == elasticsearch_leads(es, elastic.index_name(LEAD))
