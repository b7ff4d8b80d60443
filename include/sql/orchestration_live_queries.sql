-- Queries that reported a heartbeat recently: their checkpoint folders are in use.
SELECT DISTINCT query_name
FROM {% if schema %}{{ schema | ident }}.{% endif %}stream_heartbeats
WHERE recorded_at >= now() - make_interval(secs => %(within_seconds)s)
