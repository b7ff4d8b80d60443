-- Warehouse table for one registry entity. Identifiers come from include/entities.py, never from data.
CREATE TABLE IF NOT EXISTS {{ entity.table | ident }} (
{%- for column in entity.columns %}
    {{ column.name | ident }} {{ column.pg_type }}{% if column.name == entity.key %} NOT NULL{% endif %},
{%- endfor %}
    PRIMARY KEY ({{ entity.key | ident }})
);
-- A field added to the registry later reaches existing tables too.
{%- for column in entity.columns %}
ALTER TABLE {{ entity.table | ident }} ADD COLUMN IF NOT EXISTS {{ column.name | ident }} {{ column.pg_type }};
{%- endfor %}
