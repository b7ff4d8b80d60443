-- Rows of an extracted entity, optionally only those changed since a time.
SELECT count(*)
FROM {{ schema | ident }}.{{ entity.source_table | ident }}
{%- if since %}
WHERE {{ entity.version_column | ident }} >= %(since)s
{%- endif %}
