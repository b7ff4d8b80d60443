-- Kafka offset ranges the streaming job found it never read (stream_merge.sql record_lost_offsets) in the window.
SELECT topic, kafka_partition, from_offset, to_offset, reason, previous_offset
FROM {% if schema %}{{ schema | ident }}.{% endif %}lost_offsets
WHERE detected_at >= now() - make_interval(mins => %(window_minutes)s)
ORDER BY id
