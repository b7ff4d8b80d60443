-- One keyset page of an extracted entity's changes, oldest first, optionally only versions up to
-- `until`. The row comparison walks the
-- (version, key) index, so rows sharing one version are never skipped or repeated between pages.
{#- encoded: each value as the contract's encoder writes it, so the client only assembles the JSON
    (include/extract/encoding.py); right only for columns of the registry's types, which sources.py checks.
    Its first column tells whether isoformat() writes the row's timestamps as this query does. #}
{%- macro isoformat(column) -%}
{#- datetime.isoformat() in the session's time zone: no fraction when it is zero, offset as +HH:MM. -#}
replace(to_char({{ column }}, 'YYYY-MM-DD"T"HH24:MI:SS.USTZH:TZM'), '.000000', '')
{%- endmacro %}
SELECT
{%- if encoded %}
    {% for column in entity.fields if column.type == "timestamptz" -%}
    {%- set name = column.name | ident -%}
    ({{ name }} IS NULL OR {{ name }} BETWEEN %(earliest)s AND %(latest)s){% if not loop.last %} AND {% endif %}
    {%- else %}true{% endfor %},
{%- endif %}
    {% for column in entity.fields -%}
    {%- set name = column.name | ident -%}
    {%- if encoded and column.type == "timestamptz" %}{{ isoformat(name) }}
    {%- elif encoded and column.type in text_types %}CAST({{ name }} AS text)
    {%- else %}{{ name }}{% endif %}{% if not loop.last %}, {% endif %}
    {%- endfor %}
FROM {{ schema | ident }}.{{ entity.source_table | ident }}
WHERE true
{%- if keyset %}
    AND ({{ entity.version_column | ident }}, {{ entity.key | ident }})
        > (CAST(%(after_version)s AS {{ version_type }}), CAST(%(after_key)s AS {{ key_type }}))
{%- endif %}
{%- if until %}
    AND {{ entity.version_column | ident }} <= CAST(%(until)s AS {{ version_type }})
{%- endif %}
ORDER BY {{ entity.version_column | ident }}, {{ entity.key | ident }}
LIMIT %(limit)s
