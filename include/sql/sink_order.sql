{#- How the sinks order an entity's rows (include/entities.py): by its version column, or, for an entity without one,
    by the source position the cdc extraction gives each change. stream_merge.sql and reconcile.sql import these. -#}

{% macro staged(entity) -%}
{#- The staging and winners column that holds the entity's order. -#}
{{ "version" if entity.version_column else "position" }}
{%- endmacro %}

{% macro deletion(entity) -%}
{#- The deleted_records column that holds a deletion's order. -#}
{{ "deleted_at" if entity.version_column else "deleted_position" }}
{%- endmacro %}

{% macro position_version(position) -%}
{#- A source position as Elasticsearch's external version: the commit LSN shifted left by 16 bits plus the change's
    index in its transaction (the validator keeps LSNs under 2^47, so it fits 63 bits). An index over 65,535 counts
    as 65,535: the later changes of a row in so large a transaction share a version, and external_gte lets the later
    one win, which is Kafka's order, the transaction's. -#}
((('x' || substr({{ position }}, 1, 16))::bit(64)::bigint << 16)
 + least(('x' || substr({{ position }}, 18, 8))::bit(32)::bigint, 65535))
{%- endmacro %}

{% macro external_version(version, position) -%}
{#- Elasticsearch's external version of a row: its version column's epoch microseconds, else its position's. -#}
coalesce((extract(epoch FROM {{ version }}) * 1000000)::bigint, {{ position_version(position) }})
{%- endmacro %}

{% macro entity_external_version(entity, alias) -%}
{#- The external version of a warehouse row of `entity`. -#}
{% if entity.version_column -%}
(extract(epoch FROM {{ alias }}.{{ entity.version_column | ident }}) * 1000000)::bigint
{%- else -%}
{{ position_version(alias ~ "." ~ (entity.order_column | ident)) }}
{%- endif %}
{%- endmacro %}
