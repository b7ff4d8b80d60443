-- Staging tables of the streaming job's Postgres sink. Each micro-batch is bulk-loaded here (batched JDBC from
-- the executors) under its own stage_token, then merged set-based in one transaction (stream_merge.sql).
-- UNLOGGED: the rows live for seconds and can always be replayed from Kafka, so they need no WAL.
{%- for entity in entities %}
{%- set stage = stage_table(entity.table) %}

CREATE UNLOGGED TABLE IF NOT EXISTS {{ stage | ident }} (
    stage_token uuid    NOT NULL,
    deleted     boolean NOT NULL,
{%- for column in entity.columns %}
    {{ column.name | ident }} {{ column.pg_type }},
{%- endfor %}
    staged_at   timestamptz NOT NULL DEFAULT now()
);
{%- for column in entity.columns %}
ALTER TABLE {{ stage | ident }} ADD COLUMN IF NOT EXISTS {{ column.name | ident }} {{ column.pg_type }};
{%- endfor %}
CREATE INDEX IF NOT EXISTS {{ (stage ~ "_token") | ident }} ON {{ stage | ident }} (stage_token);
{%- endfor %}
{%- set stage = stage_table("dead_letters") %}

CREATE UNLOGGED TABLE IF NOT EXISTS {{ stage | ident }} (
    stage_token     uuid        NOT NULL,
    entity          text,
    reason          text        NOT NULL,
    raw_payload     text,
    topic           text,
    kafka_partition integer,
    kafka_offset    bigint,
    batch_id        bigint,
    staged_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {{ (stage ~ "_token") | ident }} ON {{ stage | ident }} (stage_token);
