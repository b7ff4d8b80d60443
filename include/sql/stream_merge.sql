-- Set-based merge of one staged micro-batch (see stream_staging.sql), all in one transaction. Identifiers come
-- from the entity registry; every value is a bound parameter: %(token)s (the batch's stage token), %(entity)s
-- (an entity's name), %(batch_id)s, %(kind)s, and %(lo)s..%(hi)s, the range of winners a statement covers (the
-- whole batch, or a part of it while spark/sinks/postgres.py isolates a row Postgres refuses).
-- jsonb_populate_record turns each staged document into a row of the target table's own type. An entity's order is
-- its version column or its source position (sink_order.sql): each statement compares the one its entity has.
{% import "sink_order.sql" as order %}

{% macro staged_offsets(stage) -%}
-- What staging holds of this batch per kind, counted in distinct Kafka records: a task retried after its COPY
-- committed stages its rows twice, and crash recovery truncates the UNLOGGED table (spark/sinks/postgres.py compares
-- this with what the tasks reported).
SELECT s.kind, count(DISTINCT (s.kafka_topic, s.kafka_partition, s.kafka_offset))
FROM {{ stage | ident }} s
WHERE s.stage_token = %(token)s
GROUP BY s.kind
{%- endmacro %}

{% macro winners(stage, winners) -%}
-- The newest staged row per entity and id: highest version (or position, for an entity ordered by it; the other is
-- null); on a tie a tombstone, then the later Kafka record.
-- Also absorbs a row staged twice by a retried task. `n` numbers the winners for ranges; `refused` is set when a
-- sink refused the row: every statement below then leaves it out and it becomes a dead letter with its Kafka
-- position.
CREATE TEMP TABLE {{ winners | ident }} ON COMMIT DROP AS
SELECT row_number() OVER (ORDER BY d.kind, d.id) AS n, d.*, NULL::text AS refused
FROM (
    SELECT DISTINCT ON (s.kind, s.id) s.kind, s.id, s.version, s.position, s.deleted, s.doc, s.kafka_topic,
           s.kafka_partition, s.kafka_offset
    FROM {{ stage | ident }} s
    WHERE s.stage_token = %(token)s AND s.id IS NOT NULL
    ORDER BY s.kind, s.id, s.version DESC NULLS LAST, s.position DESC NULLS LAST, s.deleted DESC,
             s.kafka_timestamp DESC, s.kafka_partition DESC, s.kafka_offset DESC
) d
{%- endmacro %}

{% macro refuse_row(winners) -%}
UPDATE {{ winners | ident }} SET refused = %(reason)s WHERE n = %(n)s
{%- endmacro %}

{% macro refuse_documents(winners) -%}
UPDATE {{ winners | ident }} w SET refused = r.reason
FROM unnest(%(kinds)s::text[], %(ids)s::text[], %(reasons)s::text[]) AS r (kind, id, reason)
WHERE w.kind = r.kind AND w.id = r.id
{%- endmacro %}

{% macro record_deletions(entity, winners) -%}
-- Remember every tombstone, keeping the latest deletion, so an older update replayed later stays dead.
INSERT INTO deleted_records (entity, id, {{ order.deletion(entity) }})
SELECT w.kind, w.id::uuid, w.{{ order.staged(entity) }}
FROM {{ winners | ident }} w
WHERE w.kind = %(entity)s AND w.deleted AND w.refused IS NULL AND w.n BETWEEN %(lo)s AND %(hi)s
ON CONFLICT (entity, id) DO UPDATE SET {{ order.deletion(entity) }} = EXCLUDED.{{ order.deletion(entity) }}
WHERE deleted_records.{{ order.deletion(entity) }} < EXCLUDED.{{ order.deletion(entity) }}
{%- endmacro %}

{% macro index_actions(winners) -%}
-- What Elasticsearch gets, once Postgres has taken the batch: every tombstone, and every update that no deletion
-- at least as new suppresses (Elasticsearch forgets a deleted document's version after index.gc_deletes, Postgres
-- does not); never a row Postgres refused. Versions are external versions (sink_order.sql). A row has a version or
-- a position, so one of the two comparisons is null and the other decides.
SELECT w.kind, w.id, {{ order.external_version("w.version", "w.position") }}, w.deleted, w.doc
FROM {{ winners | ident }} w
WHERE w.refused IS NULL AND (w.deleted OR NOT EXISTS (
    SELECT 1 FROM deleted_records d
    WHERE d.entity = w.kind AND d.id = w.id::uuid
      AND (d.deleted_at >= w.version OR d.deleted_position >= w.position)))
{%- endmacro %}

{% macro delete_tombstoned(entity, winners) -%}
-- A tombstone removes the row unless the row is newer than the deletion.
DELETE FROM {{ entity.table | ident }} t
USING {{ winners | ident }} w
WHERE w.kind = %(entity)s AND w.deleted AND w.refused IS NULL AND w.n BETWEEN %(lo)s AND %(hi)s
  AND t.{{ entity.key | ident }} = w.id::{{ entity.key_field.pg_type }}
  AND t.{{ entity.order_column | ident }} <= w.{{ order.staged(entity) }}
{%- endmacro %}

{% macro upsert(entity, winners) -%}
-- Newest wins: an update lands unless the stored row is newer or a deletion at least as new was recorded.
INSERT INTO {{ entity.table | ident }} AS t (
{%- for column in entity.columns %}{{ column.name | ident }}{% if not loop.last %}, {% endif %}{% endfor -%}
)
SELECT
{%- for column in entity.columns %} r.{{ column.name | ident }}{% if not loop.last %},{% endif %}{% endfor %}
FROM {{ winners | ident }} w CROSS JOIN LATERAL jsonb_populate_record(NULL::{{ entity.table | ident }}, w.doc::jsonb) r
WHERE w.kind = %(entity)s AND NOT w.deleted AND w.refused IS NULL AND w.n BETWEEN %(lo)s AND %(hi)s
  AND NOT EXISTS (
      SELECT 1 FROM deleted_records d
      WHERE d.entity = %(entity)s AND d.id = w.id::uuid AND d.{{ order.deletion(entity) }} >= w.{{ order.staged(entity) }})
ON CONFLICT ({{ entity.key | ident }}) DO UPDATE SET
{%- for column in entity.columns if column.name != entity.key %}
    {{ column.name | ident }} = EXCLUDED.{{ column.name | ident }}{% if not loop.last %},{% endif %}
{%- endfor %}
WHERE t.{{ entity.order_column | ident }} <= EXCLUDED.{{ entity.order_column | ident }}
{%- endmacro %}

{% macro insert_dead_letters(stage) -%}
-- A replayed batch records each reject once: (topic, partition, offset) is unique.
INSERT INTO dead_letters (stage, entity, reason, raw_payload, topic, kafka_partition, kafka_offset, batch_id)
SELECT 'stream', r.entity, r.reason, r.raw_payload, r.topic, r.kafka_partition, r.kafka_offset, %(batch_id)s
FROM {{ stage | ident }} s CROSS JOIN LATERAL jsonb_populate_record(NULL::dead_letters, s.doc::jsonb) r
WHERE s.stage_token = %(token)s AND s.kind = %(kind)s
ON CONFLICT (topic, kafka_partition, kafka_offset) WHERE kafka_offset IS NOT NULL DO NOTHING
{%- endmacro %}

{% macro insert_refused_dead_letters(winners) -%}
-- The rows a sink refused, as dead letters of the winning Kafka record: the document as raw_payload.
INSERT INTO dead_letters (stage, entity, reason, raw_payload, topic, kafka_partition, kafka_offset, batch_id)
SELECT 'stream', w.kind, w.refused, w.doc, w.kafka_topic, w.kafka_partition, w.kafka_offset, %(batch_id)s
FROM {{ winners | ident }} w
WHERE w.refused IS NOT NULL
ON CONFLICT (topic, kafka_partition, kafka_offset) WHERE kafka_offset IS NOT NULL DO NOTHING
{%- endmacro %}

{% macro batch_offsets(stage, offsets) -%}
-- The first and last offset this batch read of each topic partition, for the offset ledger.
CREATE TEMP TABLE {{ offsets | ident }} ON COMMIT DROP AS
SELECT s.kafka_topic AS topic, s.kafka_partition, min(s.kafka_offset) AS first_offset,
       max(s.kafka_offset) AS last_offset
FROM {{ stage | ident }} s
WHERE s.stage_token = %(token)s
GROUP BY s.kafka_topic, s.kafka_partition
{%- endmacro %}

{% macro record_lost_offsets(offsets) -%}
-- Offsets this batch finds it never read. 'skipped': a batch newer than the ledger's (not a replay), from the same
-- topic, that does not start right after the last offset merged: the broker no longer held the offsets between
-- (retention, deleted records); from..to is exact. 'reset': the batch comes from another topic of that name (its id,
-- %(topic_id)s, differs: deleted and recreated), or a newer batch starts at or below the last offset merged: what
-- the old topic held after previous_offset and the job had not read is gone with it, and from..to are the new
-- topic's offsets before the first one read (possibly none).
INSERT INTO lost_offsets (topic, kafka_partition, from_offset, to_offset, reason, previous_offset, batch_id)
SELECT b.topic, b.kafka_partition,
       CASE WHEN r.reset THEN 0 ELSE l.last_offset + 1 END, b.first_offset - 1,
       CASE WHEN r.reset THEN 'reset' ELSE 'skipped' END, l.last_offset, %(batch_id)s
FROM {{ offsets | ident }} b
JOIN stream_offsets l ON l.topic = b.topic AND l.kafka_partition = b.kafka_partition
CROSS JOIN LATERAL (SELECT l.topic_id <> %(topic_id)s::text
                           OR (%(batch_id)s > l.batch_id AND b.first_offset <= l.last_offset) AS reset) r
WHERE r.reset IS TRUE OR (%(batch_id)s > l.batch_id AND b.first_offset > l.last_offset + 1)
{%- endmacro %}

{% macro advance_offsets(offsets) -%}
-- The ledger: the last offset merged per topic partition. A replayed batch of the same topic never moves it back;
-- a newer batch sets it (lower after a reset); a batch from a recreated topic sets it and its batch id (it may come
-- from a new checkpoint, whose batch ids start again).
INSERT INTO stream_offsets AS l (topic, kafka_partition, last_offset, batch_id, topic_id)
SELECT b.topic, b.kafka_partition, b.last_offset, %(batch_id)s, %(topic_id)s
FROM {{ offsets | ident }} b
ON CONFLICT (topic, kafka_partition) DO UPDATE SET
    last_offset = CASE WHEN EXCLUDED.batch_id > l.batch_id OR l.topic_id <> EXCLUDED.topic_id
                       THEN EXCLUDED.last_offset
                       ELSE greatest(l.last_offset, EXCLUDED.last_offset) END,
    batch_id = CASE WHEN l.topic_id <> EXCLUDED.topic_id THEN EXCLUDED.batch_id
                    ELSE greatest(l.batch_id, EXCLUDED.batch_id) END,
    topic_id = coalesce(EXCLUDED.topic_id, l.topic_id),
    updated_at = now()
{%- endmacro %}

{% macro clear_stage(stage) -%}
-- This batch's rows, and any left by an attempt that died before its merge.
DELETE FROM {{ stage | ident }}
WHERE stage_token = %(token)s OR staged_at < now() - %(stale_after)s::interval
{%- endmacro %}
