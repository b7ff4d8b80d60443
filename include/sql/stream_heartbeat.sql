-- One row per micro-batch, written by the streaming job's StreamingQueryListener for the watchdog.
INSERT INTO stream_heartbeats (query_name, run_id, batch_id, input_rows, rows_per_second, latest_offsets, recorded_at)
VALUES (%(query_name)s, %(run_id)s, %(batch_id)s, %(input_rows)s, %(rows_per_second)s, %(latest_offsets)s, now())
