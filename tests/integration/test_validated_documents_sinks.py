"""Whatever the validator accepts, both real sinks accept: every registry field of every entity at and past its
type's limits (tests/validation_cases.py) goes through the job's batch function into the real Postgres merge and
the real Elasticsearch bulk. Either sink refusing one document would raise and fail the batch."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from include.entities import ENTITIES
from include.schema import quote_ident
from spark import transforms as T
from spark import validation as V
from spark.sinks.batch import MicroBatchSink
from spark.sinks.elastic import ElasticsearchSink
from spark.sinks.postgres import PostgresSink
from tests.stream_support import kafka_frame
from tests.validation_cases import NEWEST, boundary_messages

MAX_BYTES = 256 * 1024  # the job's default


def test_every_document_the_validator_accepts_lands_in_both_sinks(spark, settings, pg_schema, es, es_prefix):
    messages = boundary_messages()
    # The job's clock plus a skew that reaches just past the cases' NEWEST, so versions up to it pass.
    skew = (NEWEST - dt.datetime.now(dt.timezone.utc)).total_seconds() + 3600
    newest = NEWEST + dt.timedelta(hours=1)
    verdicts = [V.validate(value, MAX_BYTES, newest_version=newest) for value in messages]
    valid = Counter(v.entity.name for v in verdicts if v.reason is None)
    rejected = sum(1 for v in verdicts if v.reason is not None)
    assert not any(v.deleted for v in verdicts)
    assert sum(valid.values()) >= 150 and rejected >= 150, "both sides of every limit are exercised"

    elastic = ElasticsearchSink(settings.es_url, index_prefix=es_prefix)
    elastic.ensure_indices(ENTITIES)
    sink = MicroBatchSink(PostgresSink(settings, pg_schema), elastic,
                          T.documents_of(MAX_BYTES, max_version_skew_seconds=skew))
    report = sink.write(kafka_frame(spark, messages), batch_id=0)

    assert report.merged.upserted == dict(valid)
    assert report.merged.dead_letters == rejected
    assert report.indexed == {"indexed": sum(valid.values())}
    connection = PostgresSink(settings, pg_schema).connect(autocommit=True)
    try:
        for entity in ENTITIES:
            rows = connection.execute(f"SELECT count(*) FROM {quote_ident(entity.table)}").fetchone()[0]
            assert rows == valid[entity.name], entity.name
    finally:
        connection.close()
    es.indices.refresh(index=f"{es_prefix}*")
    assert {e.name: es.count(index=elastic.index_name(e))["count"] for e in ENTITIES} == dict(valid)
