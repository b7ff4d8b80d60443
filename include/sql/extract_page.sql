-- One keyset page of an extracted entity's changes, oldest first. The row comparison walks the
-- (version, key) index, so rows sharing one version are never skipped or repeated between pages.
SELECT {% for column in entity.fields %}{{ column.name | ident }}{% if not loop.last %}, {% endif %}{% endfor %}
FROM {{ schema | ident }}.{{ entity.source_table | ident }}
{%- if keyset %}
WHERE ({{ entity.version_column | ident }}, {{ entity.key | ident }})
    > (CAST(%(after_version)s AS {{ version_type }}), CAST(%(after_key)s AS {{ key_type }}))
{%- endif %}
ORDER BY {{ entity.version_column | ident }}, {{ entity.key | ident }}
LIMIT %(limit)s
