-- Supabase stand-in table for one extracted entity, as the user's Supabase project defines it.
CREATE TABLE IF NOT EXISTS {{ schema | ident }}.{{ entity.source_table | ident }} (
{%- for column in entity.fields %}
    {{ column.name | ident }} {{ column.pg_type }}
    {%- if column.name == entity.key %} NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY
    {%- elif column.name == entity.version_column %} NOT NULL DEFAULT clock_timestamp()
    {%- endif %}{% if not loop.last %},{% endif %}
{%- endfor %}
);
{% if entity.version_column -%}
-- What the poller needs of a table (an entity ordered by source position has no version and is read by cdc only):
-- keyset pagination reads in this order, the version moves on every update, and deletes are recorded.
CREATE INDEX IF NOT EXISTS {{ (entity.source_table ~ "_extract_cursor") | ident }}
    ON {{ schema | ident }}.{{ entity.source_table | ident }} ({{ entity.version_column | ident }}, {{ entity.key | ident }});

CREATE OR REPLACE TRIGGER {{ (entity.source_table ~ "_set_updated_at") | ident }}
    BEFORE UPDATE ON {{ schema | ident }}.{{ entity.source_table | ident }}
    FOR EACH ROW EXECUTE FUNCTION {{ schema | ident }}.pipeline_set_updated_at();

CREATE OR REPLACE TRIGGER {{ (entity.source_table ~ "_capture_delete") | ident }}
    AFTER DELETE ON {{ schema | ident }}.{{ entity.source_table | ident }}
    FOR EACH ROW EXECUTE FUNCTION {{ schema | ident }}.pipeline_capture_delete('{{ entity.name }}');
{%- endif %}

-- For the cdc extraction: an update that leaves a TOASTed value (a long text, array or jsonb) unchanged gets no
-- value for it in the WAL, only in the old row, which the WAL holds whole only under REPLICA IDENTITY FULL.
ALTER TABLE {{ schema | ident }}.{{ entity.source_table | ident }} REPLICA IDENTITY FULL;
