-- Rows of one registry table; the schema is optional (the connection's search_path applies without it).
SELECT count(*) FROM {% if schema %}{{ schema | ident }}.{% endif %}{{ table | ident }}
