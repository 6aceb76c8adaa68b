-- verify/coverage: every row with text must have a new vector. Rows with no text (NULL, empty or
-- blank) are not embedded by the backfill and do not count. A row without a vector that the
-- ledger holds as pending is queued (the live application just wrote it), not forgotten.
SELECT count(*) AS rows_total,
       count(*) FILTER (WHERE {has_text}) AS rows_with_text,
       count(*) FILTER (WHERE {has_text} AND {new} IS NOT NULL) AS rows_covered,
       count(*) FILTER (WHERE {has_text} AND {new} IS NULL AND l.state = 'pending') AS rows_queued
FROM {table} AS t
LEFT JOIN reembed.ledger AS l ON l.plan_id = {plan_id} AND l.pk = {ledger_key}
