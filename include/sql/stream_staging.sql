-- Staging of the streaming job's Postgres sink. Each micro-batch's documents (every valid row and every reject,
-- spark/transforms.py) are COPYed here from the executors under the batch's stage_token, then merged set-based in
-- one transaction (stream_merge.sql), which also picks the newest row per id from the Kafka position kept here.
-- UNLOGGED: the rows live for seconds and can always be replayed from Kafka, so they need no WAL. For the same
-- reason a table of an older shape is replaced rather than migrated.
-- task_partition: the Spark partition whose task staged the row. A task attempt that finds rows of an earlier
-- attempt of its partition under its token (one that committed, then died before Spark saw its result) deletes
-- them before staging its own (spark/sinks/postgres.py), so a retried task never stages a Kafka record twice.
DO $$
BEGIN
    IF to_regclass('{{ stage | ident }}') IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = to_regclass('{{ stage | ident }}') AND attname = 'position' AND NOT attisdropped
    ) THEN
        DROP TABLE {{ stage | ident }};
    END IF;
END $$;
CREATE UNLOGGED TABLE IF NOT EXISTS {{ stage | ident }} (
    stage_token     uuid        NOT NULL,
    task_partition  integer     NOT NULL,
    kind            text        NOT NULL,   -- an entity name, or 'dead_letter'
    id              text,                   -- the entity key (null for a dead letter)
    version         timestamptz,            -- the entity's version column (null for a dead letter)
    position        text,                   -- the source position of an entity ordered by it (include/entities.py)
    deleted         boolean     NOT NULL,   -- a tombstone
    kafka_timestamp timestamptz NOT NULL,
    kafka_topic     text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    doc             text        NOT NULL,   -- JSON: the row, one member per column of the target table
    staged_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {{ (stage ~ "_token") | ident }} ON {{ stage | ident }} (stage_token, kind);
