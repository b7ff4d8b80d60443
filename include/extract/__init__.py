"""Supabase -> Kafka extraction: incremental by keyset cursor, gap-free, replayable.

Modules: `sources` (Postgres and Supabase REST adapters), `publisher` (Kafka), `state` (cursors and dead
letters in the warehouse), `extractor` (the page loop), `service` (wiring from settings and the user's old
functions), `airflow_tasks` (wiring from Airflow connections), `demo_data` (the stand-in's demo rows).
`python -m include.extract --help` runs any of it from a shell.
"""
