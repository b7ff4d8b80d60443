-- The source's clock, and the start of the oldest write transaction (one holding an xid) still open in this
-- database: the extraction's read bound and cursor ceiling (include/extract/extractor.py).
-- `hidden_writers` counts open write transactions whose start this role may not see: without superuser or
-- pg_read_all_stats, pg_stat_activity shows other roles' backend_xid but NULL xact_start.
SELECT
    clock_timestamp() AS now,
    min(xact_start) AS oldest_open_write,
    count(*) FILTER (WHERE xact_start IS NULL) AS hidden_writers
FROM pg_catalog.pg_stat_activity
WHERE datname = current_database() AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()
