-- One keyset page of an entity's captured deletions (see stack/sql/source_support.sql), oldest first, optionally only
-- those up to `until`.
SELECT id, deleted_at
FROM {{ schema | ident }}.deleted_records
WHERE entity = %(entity)s
{%- if keyset %}
    AND (deleted_at, id) > (CAST(%(after_version)s AS timestamptz), CAST(%(after_key)s AS uuid))
{%- endif %}
{%- if until %}
    AND deleted_at <= CAST(%(until)s AS timestamptz)
{%- endif %}
ORDER BY deleted_at, id
LIMIT %(limit)s
