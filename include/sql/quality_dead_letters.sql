-- Dead letters of the window per entity (NULL entity: the message could not be attributed to one) and reason class
-- (the reason before ": <field>"; `validator_error` marks a bug in the validator, not a bad message).
SELECT entity, split_part(reason, ':', 1) AS reason_class, count(*)
FROM {% if schema %}{{ schema | ident }}.{% endif %}dead_letters
WHERE created_at >= now() - make_interval(mins => %(window_minutes)s)
GROUP BY entity, reason_class
