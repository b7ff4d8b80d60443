"""The content reconciler: proves, id by id and version by version, that Postgres holds what the source holds and
Elasticsearch what Postgres holds, and repairs what differs.

Modules: `compare` (pure: canonical ids, per-bucket digests, the merge of two (id, version) sets into drift by
kind), `stores` (thin readers of a Postgres table and an Elasticsearch index), `repair` (Elasticsearch from
Postgres; Postgres from the source through Kafka), `service` (one entity's run from open connections, and the
same from the settings), `airflow_tasks` (the same from Airflow's connections), `__main__` (the command line).
"""
