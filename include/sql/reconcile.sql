-- The content reconciler's statements (include/reconcile/stores.py, repair.py). `table` is a registry table of the
-- warehouse or of the source; the schema is optional (the connection's search_path applies without it). Values are
-- bound: %(digits)s (hex digits of a bucket prefix), %(lo)s / %(hi)s (arrays of bucket bounds), %(ids)s (uuids),
-- %(entity)s (a registry entity name).

{% macro relation(schema, table) -%}
{% if schema %}{{ schema | ident }}.{% endif %}{{ table | ident }}
{%- endmacro %}

{% macro version_micros(entity, alias) -%}
{#- The version column's epoch microseconds: the Elasticsearch sink's external version (stream_merge.sql). -#}
(extract(epoch FROM {{ alias }}.{{ entity.version_column | ident }}) * 1000000)::bigint
{%- endmacro %}

{% macro digests(entity, schema, table) -%}
-- Per bucket (the id's first `digits` hex digits): rows, and the sum of the first 64 bits of md5('id:version')
-- as signed integers, the hash include/reconcile/compare.py computes for Elasticsearch's side.
SELECT left(t.{{ entity.key | ident }}::text, %(digits)s) AS bucket, count(*),
       sum(('x' || left(md5(t.{{ entity.key | ident }}::text || ':' || {{ version_micros(entity, "t") }}::text), 16)
           )::bit(64)::bigint)
FROM {{ relation(schema, table) }} t
GROUP BY 1
{%- endmacro %}

{% macro count(schema, table) -%}
SELECT count(*) FROM {{ relation(schema, table) }}
{%- endmacro %}

{% macro pairs(entity, schema, table) -%}
-- (id, version) of every row in the given buckets, each bucket a range of the primary key's index.
SELECT t.{{ entity.key | ident }}::text, {{ version_micros(entity, "t") }}
FROM unnest(CAST(%(lo)s AS uuid[]), CAST(%(hi)s AS uuid[])) AS r (lo, hi)
JOIN {{ relation(schema, table) }} t ON t.{{ entity.key | ident }} BETWEEN r.lo AND r.hi
{%- endmacro %}

{% macro source_rows(entity, schema) -%}
-- The source's current rows of the given ids, every field of the message contract.
SELECT {% for column in entity.fields %}t.{{ column.name | ident }}{% if not loop.last %}, {% endif %}{% endfor %}
FROM {{ relation(schema, entity.source_table) }} t
WHERE t.{{ entity.key | ident }} = ANY(CAST(%(ids)s AS uuid[]))
{%- endmacro %}

{% macro source_deletions(schema) -%}
-- When the source deleted the given ids of an entity (its capture trigger, stack/sql/source_support.sql).
SELECT d.id::text, d.deleted_at
FROM {{ relation(schema, "deleted_records") }} d
WHERE d.entity = %(entity)s AND d.id = ANY(CAST(%(ids)s AS uuid[]))
{%- endmacro %}

{% macro versions(entity, schema) -%}
-- The warehouse's versions of the given ids.
SELECT t.{{ entity.key | ident }}::text, t.{{ entity.version_column | ident }}
FROM {{ relation(schema, entity.table) }} t
WHERE t.{{ entity.key | ident }} = ANY(CAST(%(ids)s AS uuid[]))
{%- endmacro %}

{% macro documents(entity, schema) -%}
-- The warehouse's rows of the given ids as Elasticsearch documents: every column, with the sink's external version.
SELECT t.{{ entity.key | ident }}::text, {{ version_micros(entity, "t") }}, to_jsonb(t)::text
FROM {{ relation(schema, entity.table) }} t
WHERE t.{{ entity.key | ident }} = ANY(CAST(%(ids)s AS uuid[]))
{%- endmacro %}
