-- Dead letters of the window per entity (NULL entity: the message could not be attributed to one).
SELECT entity, count(*)
FROM {% if schema %}{{ schema | ident }}.{% endif %}dead_letters
WHERE created_at >= now() - make_interval(mins => %(window_minutes)s)
GROUP BY entity
