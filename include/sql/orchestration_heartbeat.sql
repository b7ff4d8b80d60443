-- The latest heartbeat of one streaming query and its age by the database's clock.
SELECT max(recorded_at) AS last_recorded_at,
       extract(epoch FROM now() - max(recorded_at)) AS age_seconds
FROM {% if schema %}{{ schema | ident }}.{% endif %}stream_heartbeats
WHERE query_name = %(query_name)s
