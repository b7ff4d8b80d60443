"""The streaming job's transform: Kafka rows in, one document per row out, valid or rejected.

    documents = batch.transform(to_documents(max_payload_bytes, max_version_skew_seconds=300))

Each value is validated by spark/validation.py on the executors (mapInArrow: Arrow batches to the Python
workers, no per-row JVM call) and rendered once, as the JSON document both sinks load. The output keeps the Kafka
position of every row, so the sink picks the newest row per id (spark/sinks/postgres.py) and dead letters carry
their source offset. Nothing here touches a service: tests run it on tiny literal DataFrames.

Whatever a message makes the validator or the rendering raise, that message alone becomes a dead letter
(`validator_error: <ExceptionType>`, logged once per batch) and its batch goes on: no message can fail a batch,
so none can stop the stream.

The job's sink applies the same per-batch function (`documents_of`) inside its own Python pass, which then COPYs
the documents: one pass per row instead of two (a pass costs about 0.14 s per task, whatever its size, and a
second one would carry every document back through the JVM).

Output columns (DOCUMENT_SCHEMA):
    kind        the entity's name, or DEAD_LETTER for a reject
    id          the entity key (null for a reject)
    version     the version column's instant (null for a reject, and for an entity ordered by source position)
    position    the source position of an entity ordered by it (null otherwise)
    deleted     a tombstone
    doc         valid: the row as a JSON object, one member per column of the entity's table (nulls kept);
                rejected: the dead-letter row (entity, reason, raw_payload, topic, kafka_partition, kafka_offset)
    reason      why it was rejected (null when valid)
    topic, partition, offset, timestamp    the Kafka record's
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from typing import Callable, Iterator

from pyspark.sql import DataFrame

from include.contract import DEFAULT_MAX_VERSION_SKEW_SECONDS
from spark.validation import VALIDATOR_ERROR, latest_version, render, validate

log = logging.getLogger(__name__)

KAFKA_META = ("topic", "partition", "offset", "timestamp")
KAFKA_COLUMNS = ("value", *KAFKA_META)
KIND, DOCUMENT_ID, DOCUMENT_VERSION, DOCUMENT_POSITION = "kind", "id", "version", "position"
DELETED, DOCUMENT, REASON = "deleted", "doc", "reason"
DEAD_LETTER = "dead_letter"
DOCUMENT_SCHEMA = (f"{KIND} string, {DOCUMENT_ID} string, {DOCUMENT_VERSION} timestamp, "
                   f"{DOCUMENT_POSITION} string, {DELETED} boolean, {DOCUMENT} string, {REASON} string, "
                   f"topic string, partition int, offset long, timestamp timestamp")


def raw_payload(value: bytes | None) -> str | None:
    """A rejected value as text for the dead-letter table: undecodable bytes and NUL (which PostgreSQL text cannot
    hold) become U+FFFD, everything else is kept as received."""
    return None if value is None else value.decode("utf-8", "replace").replace("\x00", "\ufffd")


def _document(value: bytes | None, max_payload_bytes: int, newest_version) -> tuple:
    """(kind, id, version, position, deleted, rendered document or None for a reject, reason, entity) of one value."""
    verdict = validate(value, max_payload_bytes, newest_version=newest_version)
    if verdict.reason is not None:
        return DEAD_LETTER, None, None, None, False, None, verdict.reason, verdict.entity
    return (verdict.entity.name, verdict.key, verdict.version, verdict.position, verdict.deleted,
            render(verdict.row), None, verdict.entity)


def document_batch(batch, max_payload_bytes: int, max_version_skew_seconds: float = DEFAULT_MAX_VERSION_SKEW_SECONDS):
    """One Arrow batch of Kafka rows (value + KAFKA_META) -> its batch of documents (DOCUMENT_SCHEMA)."""
    import pyarrow as pa

    newest_version = latest_version(max_version_skew_seconds)  # one clock reading per batch
    kinds, ids, versions, positions, deleted, documents, reasons = [], [], [], [], [], [], []
    errors: Counter = Counter()
    first_error = None
    for number, value in enumerate(batch.column("value").to_pylist()):
        try:
            kind, record_id, version, position, is_deleted, document, reason, entity = _document(
                value, max_payload_bytes, newest_version)
        except Exception as error:  # a bug met by this message: it, and only it, becomes a dead letter
            kind, record_id, version, position, is_deleted, document, entity = (DEAD_LETTER, None, None, None, False,
                                                                                None, None)
            reason = f"{VALIDATOR_ERROR}: {type(error).__name__}"
            errors[type(error).__name__] += 1
            first_error = first_error or error
        if document is None:
            document = render({
                "entity": entity.name if entity else None,
                "reason": reason,
                "raw_payload": raw_payload(value),
                "topic": batch.column("topic")[number].as_py(),
                "kafka_partition": batch.column("partition")[number].as_py(),
                "kafka_offset": batch.column("offset")[number].as_py(),
            })
        kinds.append(kind)
        ids.append(record_id)
        versions.append(version)
        positions.append(position)
        deleted.append(is_deleted)
        documents.append(document)
        reasons.append(reason)
    if errors:
        log.error("validator errors, each message a dead letter (%s): %s", VALIDATOR_ERROR, dict(errors),
                  exc_info=first_error)
    timestamp_type = batch.schema.field("timestamp").type  # the session time zone's, as Spark sent it
    return pa.RecordBatch.from_arrays(
        [pa.array(kinds, pa.string()), pa.array(ids, pa.string()), pa.array(versions, timestamp_type),
         pa.array(positions, pa.string()), pa.array(deleted, pa.bool_()), pa.array(documents, pa.string()),
         pa.array(reasons, pa.string()), *[batch.column(name) for name in KAFKA_META]],
        names=[KIND, DOCUMENT_ID, DOCUMENT_VERSION, DOCUMENT_POSITION, DELETED, DOCUMENT, REASON, *KAFKA_META],
    )


def documents_of(max_payload_bytes: int, *,
                 max_version_skew_seconds: float = DEFAULT_MAX_VERSION_SKEW_SECONDS) -> Callable:
    """document_batch with its limits bound: Arrow batch of KAFKA_COLUMNS -> batch of DOCUMENT_SCHEMA."""
    if max_payload_bytes <= 0:
        raise ValueError(f"max_payload_bytes must be positive, got {max_payload_bytes}")
    if max_version_skew_seconds < 0:
        raise ValueError(f"max_version_skew_seconds must not be negative, got {max_version_skew_seconds}")
    return functools.partial(document_batch, max_payload_bytes=max_payload_bytes,
                             max_version_skew_seconds=max_version_skew_seconds)


def to_documents(max_payload_bytes: int, *,
                 max_version_skew_seconds: float = DEFAULT_MAX_VERSION_SKEW_SECONDS) -> Callable[[DataFrame], DataFrame]:
    """Validate and render every row of a Kafka-shaped DataFrame (batch or streaming)."""
    documents = documents_of(max_payload_bytes, max_version_skew_seconds=max_version_skew_seconds)

    def each_batch(batches: Iterator) -> Iterator:
        for batch in batches:
            yield documents(batch)

    def transform(df: DataFrame) -> DataFrame:
        return df.select(*KAFKA_COLUMNS).mapInArrow(each_batch, DOCUMENT_SCHEMA)

    return transform
