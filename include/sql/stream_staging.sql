-- Staging of the streaming job's Postgres sink. Each micro-batch is bulk-loaded here in one batched JDBC write
-- from the executors (every entity's newest-per-id rows and the rejects, as JSON documents) under its own
-- stage_token, then merged set-based in one transaction (stream_merge.sql).
-- UNLOGGED: the rows live for seconds and can always be replayed from Kafka, so they need no WAL.
CREATE UNLOGGED TABLE IF NOT EXISTS {{ stage | ident }} (
    stage_token uuid        NOT NULL,
    kind        text        NOT NULL,   -- an entity name, or 'dead_letter'
    deleted     boolean     NOT NULL,   -- a tombstone
    doc         jsonb       NOT NULL,   -- the row, one member per column of the target table
    staged_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {{ (stage ~ "_token") | ident }} ON {{ stage | ident }} (stage_token, kind);
