-- Supabase stand-in: what the hosted project needs besides its tables. Safe to run on Supabase too.
-- `schema` is `public` in production; tests render it with a schema of their own.

CREATE OR REPLACE FUNCTION {{ schema | ident }}.pipeline_set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END $$;

-- Deletes are captured by trigger: it needs no replication rights, which hosted Supabase does not grant.
CREATE TABLE IF NOT EXISTS {{ schema | ident }}.deleted_records (
    entity      text        NOT NULL,
    id          uuid        NOT NULL,
    deleted_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (entity, id)
);
CREATE INDEX IF NOT EXISTS deleted_records_cursor ON {{ schema | ident }}.deleted_records (entity, deleted_at, id);

-- A re-deleted id (deleted, re-inserted, deleted again) moves its deletion time forward, so the extraction
-- publishes a new tombstone for it.
CREATE OR REPLACE FUNCTION {{ schema | ident }}.pipeline_capture_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {{ schema | ident }}.deleted_records (entity, id) VALUES (TG_ARGV[0], OLD.id)
    ON CONFLICT (entity, id) DO UPDATE SET deleted_at = EXCLUDED.deleted_at;
    RETURN OLD;
END $$;
