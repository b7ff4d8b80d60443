-- The content reconciler's statements (include/reconcile/stores.py, repair.py). `table` is a registry table of the
-- warehouse or of the source; the schema is optional (the connection's search_path applies without it). Values are
-- bound: %(digits)s (hex digits of a bucket prefix), %(lo)s / %(hi)s (arrays of bucket bounds), %(ids)s (uuids),
-- %(entity)s (a registry entity name).

{% macro relation(schema, table) -%}
{% if schema %}{{ schema | ident }}.{% endif %}{{ table | ident }}
{%- endmacro %}

{% import "sink_order.sql" as order %}

{% macro row_version(entity, alias, content) -%}
{#- What a store's row compares by: the sinks' external version, or with `content` (the source and Postgres of an
    entity ordered by source position, which the source table does not hold) a 60-bit hash of the contract's fields,
    each as text that reads the same in either database: timestamps as epoch seconds (not the session's time zone),
    numerics without trailing zeros (the sink rounds them to its scale). A record's text marks nulls. -#}
{% if content -%}
('x' || left(md5(ROW(
{%- for column in entity.fields -%}
{%- if column.type == "timestamptz" %}extract(epoch FROM {{ alias }}.{{ column.name | ident }})::text
{%- elif column.type == "numeric" %}trim_scale({{ alias }}.{{ column.name | ident }})::text
{%- else %}{{ alias }}.{{ column.name | ident }}::text{% endif %}{% if not loop.last %}, {% endif %}
{%- endfor -%}
)::text), 15))::bit(60)::bigint
{%- else -%}
{{ order.entity_external_version(entity, alias) }}
{%- endif %}
{%- endmacro %}

{% macro digests(entity, schema, table, content) -%}
-- Per bucket (the id's first `digits` hex digits): rows, and the sum of the first 64 bits of md5('id:version')
-- as signed integers, the hash include/reconcile/compare.py computes for Elasticsearch's side.
SELECT left(t.{{ entity.key | ident }}::text, %(digits)s) AS bucket, count(*),
       sum(('x' || left(md5(t.{{ entity.key | ident }}::text || ':' || {{ row_version(entity, "t", content) }}::text),
                        16))::bit(64)::bigint)
FROM {{ relation(schema, table) }} t
GROUP BY 1
{%- endmacro %}

{% macro count(schema, table) -%}
SELECT count(*) FROM {{ relation(schema, table) }}
{%- endmacro %}

{% macro pairs(entity, schema, table, content) -%}
-- (id, version) of every row in the given buckets, each bucket a range of the primary key's index.
SELECT t.{{ entity.key | ident }}::text, {{ row_version(entity, "t", content) }}
FROM unnest(CAST(%(lo)s AS uuid[]), CAST(%(hi)s AS uuid[])) AS r (lo, hi)
JOIN {{ relation(schema, table) }} t ON t.{{ entity.key | ident }} BETWEEN r.lo AND r.hi
{%- endmacro %}

{% macro source_rows(entity, schema) -%}
-- The source's current rows of the given ids, every field of the message contract.
SELECT {% for column in entity.fields %}t.{{ column.name | ident }}{% if not loop.last %}, {% endif %}{% endfor %}
FROM {{ relation(schema, entity.source_table) }} t
WHERE t.{{ entity.key | ident }} = ANY(CAST(%(ids)s AS uuid[]))
{%- endmacro %}

{% macro source_position() -%}
-- The source's WAL position now: re-published rows of an entity ordered by source position are dated here.
SELECT pg_current_wal_lsn()::text
{%- endmacro %}

{% macro source_deletions(schema) -%}
-- When the source deleted the given ids of an entity (its capture trigger, stack/sql/source_support.sql).
SELECT d.id::text, d.deleted_at
FROM {{ relation(schema, "deleted_records") }} d
WHERE d.entity = %(entity)s AND d.id = ANY(CAST(%(ids)s AS uuid[]))
{%- endmacro %}

{% macro versions(entity, schema) -%}
-- The warehouse's orders (version or source position) of the given ids.
SELECT t.{{ entity.key | ident }}::text, t.{{ entity.order_column | ident }}
FROM {{ relation(schema, entity.table) }} t
WHERE t.{{ entity.key | ident }} = ANY(CAST(%(ids)s AS uuid[]))
{%- endmacro %}

{% macro documents(entity, schema) -%}
-- The warehouse's rows of the given ids as Elasticsearch documents: every column, with the sink's external version.
SELECT t.{{ entity.key | ident }}::text, {{ order.entity_external_version(entity, "t") }}, to_jsonb(t)::text
FROM {{ relation(schema, entity.table) }} t
WHERE t.{{ entity.key | ident }} = ANY(CAST(%(ids)s AS uuid[]))
{%- endmacro %}
