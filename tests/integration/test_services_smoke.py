"""One round trip per real service of the local stack."""

from __future__ import annotations

import uuid

from kafka import KafkaConsumer, KafkaProducer


def _produce(settings, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    for key, value in messages:
        producer.send(topic, key=key, value=value).get(timeout=30)
    producer.close()


def test_kafka_produce_and_consume(settings, kafka_topic):
    sent = [(f"k{i}".encode(), f"mensagem {i} ação".encode()) for i in range(5)]
    _produce(settings, kafka_topic, sent)
    consumer = KafkaConsumer(kafka_topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=30_000, group_id=None)
    received = []
    for message in consumer:  # ends early once all arrived; the timeout bounds a broken broker
        received.append((message.key, message.value))
        if len(received) == len(sent):
            break
    consumer.close()
    assert sorted(received) == sorted(sent)


def test_elasticsearch_index_refresh_search(es, es_prefix):
    index = f"{es_prefix}_smoke"
    es.index(index=index, id="1", document={"nome": "João Conceição", "cidade": "São Paulo"})
    es.index(index=index, id="2", document={"nome": "Maria Souza", "cidade": "Recife"})
    es.indices.refresh(index=index)
    hits = es.search(index=index, query={"match": {"nome": "conceição"}})["hits"]["hits"]
    assert [hit["_id"] for hit in hits] == ["1"]
    assert hits[0]["_source"]["cidade"] == "São Paulo"


def test_postgres_round_trip(pg_connect):
    connection = pg_connect()
    value = f"olá {uuid.uuid4()}"
    row = connection.execute("SELECT %s::text, current_setting('statement_timeout')", (value,)).fetchone()
    assert row[0] == value
    assert row[1] != "0", "every session must carry a statement timeout"


def test_spark_reads_kafka_topic_through_the_connector(settings, spark, kafka_topic):
    sent = [(f"id-{i}".encode(), f'{{"n": {i}}}'.encode()) for i in range(7)]
    _produce(settings, kafka_topic, sent)
    frame = (spark.read.format("kafka")
             .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
             .option("subscribe", kafka_topic)
             .option("startingOffsets", "earliest")
             .load()
             .selectExpr("CAST(key AS STRING) AS key", "CAST(value AS STRING) AS value", "partition", "offset"))
    rows = frame.collect()
    assert sorted((r.key, r.value) for r in rows) == sorted((k.decode(), v.decode()) for k, v in sent)
    assert {r.partition for r in rows} <= set(range(settings.kafka_partitions))
