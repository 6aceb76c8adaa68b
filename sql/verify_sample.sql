-- verify: a deterministic sample of rows that have text and a new vector. Ordering by a keyed
-- md5 of the primary key gives the same rows for the same seed, whatever the physical order.
SELECT {key} AS key, {text} AS text, {title} AS title, {new} AS vector
FROM {table} AS t
WHERE {new} IS NOT NULL AND {has_text}
ORDER BY md5({key} || {seed})
LIMIT {limit}
