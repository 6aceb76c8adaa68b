-- verify/coverage: every row with text must have a new vector. Rows with no text (NULL, empty or
-- blank) are not embedded by the backfill and do not count.
SELECT count(*) AS rows_total,
       count(*) FILTER (WHERE {has_text}) AS rows_with_text,
       count(*) FILTER (WHERE {has_text} AND {new} IS NOT NULL) AS rows_covered
FROM {table} AS t
