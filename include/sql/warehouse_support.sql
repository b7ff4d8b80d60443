-- Tables the pipeline itself keeps in the warehouse.

-- Every message or source row that could not be loaded, with enough context to replay it.
CREATE TABLE IF NOT EXISTS dead_letters (
    id            bigserial PRIMARY KEY,
    stage         text        NOT NULL,   -- 'extract' or 'stream'
    entity        text,
    reason        text        NOT NULL,
    raw_payload   text,
    topic         text,
    kafka_partition integer,
    kafka_offset  bigint,
    batch_id      bigint,
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- A replayed batch must not record the same reject twice.
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_source_offset
    ON dead_letters (topic, kafka_partition, kafka_offset) WHERE kafka_offset IS NOT NULL;
CREATE INDEX IF NOT EXISTS dead_letters_created_at ON dead_letters (created_at);

-- Deletions seen downstream, so an older update replayed later cannot bring a record back. A deletion's order is
-- its version (deleted_at) or, for an entity ordered by source position, its position (include/entities.py).
CREATE TABLE IF NOT EXISTS deleted_records (
    entity      text        NOT NULL,
    id          uuid        NOT NULL,
    deleted_at  timestamptz,
    PRIMARY KEY (entity, id)
);
ALTER TABLE deleted_records ADD COLUMN IF NOT EXISTS deleted_position text;
ALTER TABLE deleted_records ALTER COLUMN deleted_at DROP NOT NULL;

-- One row per streaming micro-batch, written by the job's StreamingQueryListener for the watchdog.
CREATE TABLE IF NOT EXISTS stream_heartbeats (
    query_name      text        NOT NULL,
    run_id          text        NOT NULL,
    batch_id        bigint      NOT NULL,
    input_rows      bigint      NOT NULL,
    rows_per_second double precision,
    latest_offsets  jsonb,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (query_name, run_id, batch_id)
);
CREATE INDEX IF NOT EXISTS stream_heartbeats_recent ON stream_heartbeats (query_name, recorded_at DESC);

-- Extraction cursor per entity: advanced only after the broker acknowledged every message up to it.
CREATE TABLE IF NOT EXISTS extract_cursors (
    entity          text PRIMARY KEY,
    cursor_updated_at timestamptz NOT NULL,
    cursor_id       uuid        NOT NULL,
    moved_at        timestamptz NOT NULL DEFAULT now()
);

-- A bad source row is re-read by every run whose lookback window covers it; record each version once.
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_extract_payload
    ON dead_letters (entity, md5(raw_payload)) WHERE stage = 'extract';

-- The offset ledger of the streaming job: the last Kafka offset merged per topic partition, written in the merge's
-- transaction with the batch it belongs to (stream_merge.sql advance_offsets).
CREATE TABLE IF NOT EXISTS stream_offsets (
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    last_offset     bigint      NOT NULL,
    batch_id        bigint      NOT NULL,   -- the micro-batch that set it: a replay (same or lower) is no gap
    topic_id        text,                   -- Kafka's id of the topic it was read from (a recreated topic differs)
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition)
);

-- Kafka offsets the job never read, found by the ledger in the same transaction: 'skipped' (the broker no longer
-- held them: retention, deleted records) or 'reset' (the partition's offsets restarted lower: topic recreated).
CREATE TABLE IF NOT EXISTS lost_offsets (
    id              bigserial   PRIMARY KEY,
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    from_offset     bigint      NOT NULL,
    to_offset       bigint      NOT NULL,   -- inclusive; below from_offset when a reset skipped nothing new
    reason          text        NOT NULL,
    previous_offset bigint      NOT NULL,   -- the ledger's last offset before
    batch_id        bigint      NOT NULL,
    detected_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS lost_offsets_detected_at ON lost_offsets (detected_at);

-- The logical replication slot of the cdc extraction (include/extract/cdc.py), per slot name: where its initial
-- snapshot stands and its last confirmed position. A slot recorded here but missing or invalidated on the source
-- stops the extraction, which never silently starts over from the source's present.
CREATE TABLE IF NOT EXISTS extract_cdc_slots (
    slot_name          text        PRIMARY KEY,
    consistent_lsn     pg_lsn      NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    snapshot_done      boolean     NOT NULL DEFAULT false,
    -- Per entity, the last key of the snapshot the broker acknowledged.
    snapshot_progress  jsonb       NOT NULL DEFAULT '{}',
    confirmed_lsn      pg_lsn,
    confirmed_at       timestamptz
);
