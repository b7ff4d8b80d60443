-- Set-based merge of one staged micro-batch (see stream_staging.sql). Identifiers come from the entity
-- registry; every value is a bound parameter: %(token)s (the batch's stage token), %(entity)s (entity name).
-- jsonb_populate_record turns each staged document into a row of the target table's own type.
-- Staged rows are already newest-per-id; DISTINCT ON guards against a task retry staging a row twice, which
-- would otherwise make ON CONFLICT touch one row twice and fail the batch.

{% macro staged(entity, stage, tombstones) -%}
{{ stage | ident }} s CROSS JOIN LATERAL jsonb_populate_record(NULL::{{ entity.table | ident }}, s.doc) r
WHERE s.stage_token = %(token)s AND s.kind = %(entity)s AND {% if not tombstones %}NOT {% endif %}s.deleted
{%- endmacro %}

{% macro record_deletions(entity, stage) -%}
-- Remember every tombstone, keeping the latest deletion time, so an older update replayed later stays dead.
INSERT INTO deleted_records (entity, id, deleted_at)
SELECT DISTINCT ON (r.{{ entity.key | ident }}) %(entity)s::text, r.{{ entity.key | ident }}, r.{{ entity.version_column | ident }}
FROM {{ staged(entity, stage, tombstones=True) }}
ORDER BY r.{{ entity.key | ident }}, r.{{ entity.version_column | ident }} DESC
ON CONFLICT (entity, id) DO UPDATE SET deleted_at = EXCLUDED.deleted_at
WHERE deleted_records.deleted_at < EXCLUDED.deleted_at
{%- endmacro %}

{% macro delete_tombstoned(entity, stage) -%}
-- A tombstone removes the row unless the row is newer than the deletion.
DELETE FROM {{ entity.table | ident }} t
USING (SELECT r.{{ entity.key | ident }}, r.{{ entity.version_column | ident }}
       FROM {{ staged(entity, stage, tombstones=True) }}) d
WHERE t.{{ entity.key | ident }} = d.{{ entity.key | ident }}
  AND t.{{ entity.version_column | ident }} <= d.{{ entity.version_column | ident }}
{%- endmacro %}

{% macro upsert(entity, stage) -%}
-- Newest wins: an update lands unless the stored row is newer or a deletion at least as new was recorded.
INSERT INTO {{ entity.table | ident }} AS t (
{%- for column in entity.columns %}{{ column.name | ident }}{% if not loop.last %}, {% endif %}{% endfor -%}
)
SELECT DISTINCT ON (r.{{ entity.key | ident }})
{%- for column in entity.columns %} r.{{ column.name | ident }}{% if not loop.last %},{% endif %}{% endfor %}
FROM {{ staged(entity, stage, tombstones=False) }}
  AND NOT EXISTS (
      SELECT 1 FROM deleted_records d
      WHERE d.entity = %(entity)s AND d.id = r.{{ entity.key | ident }}
        AND d.deleted_at >= r.{{ entity.version_column | ident }})
ORDER BY r.{{ entity.key | ident }}, r.{{ entity.version_column | ident }} DESC
ON CONFLICT ({{ entity.key | ident }}) DO UPDATE SET
{%- for column in entity.columns if column.name != entity.key %}
    {{ column.name | ident }} = EXCLUDED.{{ column.name | ident }}{% if not loop.last %},{% endif %}
{%- endfor %}
WHERE t.{{ entity.version_column | ident }} <= EXCLUDED.{{ entity.version_column | ident }}
{%- endmacro %}

{% macro suppressed_ids(entity, stage) -%}
-- Updates the upsert skipped because of a recorded deletion: the Elasticsearch sink must skip them too
-- (Elasticsearch forgets a deleted document's version after index.gc_deletes).
SELECT r.{{ entity.key | ident }}::text
FROM {{ staged(entity, stage, tombstones=False) }}
  AND EXISTS (
      SELECT 1 FROM deleted_records d
      WHERE d.entity = %(entity)s AND d.id = r.{{ entity.key | ident }}
        AND d.deleted_at >= r.{{ entity.version_column | ident }})
{%- endmacro %}

{% macro insert_dead_letters(stage) -%}
-- A replayed batch records each reject once: (topic, partition, offset) is unique.
INSERT INTO dead_letters (stage, entity, reason, raw_payload, topic, kafka_partition, kafka_offset, batch_id)
SELECT 'stream', r.entity, r.reason, r.raw_payload, r.topic, r.kafka_partition, r.kafka_offset, r.batch_id
FROM {{ stage | ident }} s CROSS JOIN LATERAL jsonb_populate_record(NULL::dead_letters, s.doc) r
WHERE s.stage_token = %(token)s AND s.kind = %(kind)s
ON CONFLICT (topic, kafka_partition, kafka_offset) WHERE kafka_offset IS NOT NULL DO NOTHING
{%- endmacro %}

{% macro clear_stage(stage) -%}
-- This batch's rows, and any left by an attempt that died before its merge.
DELETE FROM {{ stage | ident }}
WHERE stage_token = %(token)s OR staged_at < now() - %(stale_after)s::interval
{%- endmacro %}
