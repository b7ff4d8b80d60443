-- One row per micro-batch for the watchdog. Spark re-reports the last batch id while idle: the conflict
-- refreshes the time (the query is alive) and keeps the batch's own counts.
INSERT INTO stream_heartbeats (query_name, run_id, batch_id, input_rows, rows_per_second, latest_offsets, recorded_at)
VALUES (%(query_name)s, %(run_id)s, %(batch_id)s, %(input_rows)s, %(rows_per_second)s, %(latest_offsets)s, now())
ON CONFLICT (query_name, run_id, batch_id) DO UPDATE SET recorded_at = EXCLUDED.recorded_at
