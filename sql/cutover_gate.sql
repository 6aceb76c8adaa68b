-- Cutover gate, run before the lock (it scans the table): the backfill is complete when no
-- ledger row is pending, no done row was embedded from text other than the row's current text
-- (stale), and no row that has text lacks a new vector. `without_vector` also counts rows with
-- blank text: they matter when the application's column is NOT NULL.
SELECT
    (SELECT count(*) FROM reembed.ledger WHERE plan_id = {plan_id} AND state = 'pending') AS pending,
    count(*) FILTER (WHERE l.state = 'done' AND l.text_hash IS DISTINCT FROM {hash}) AS stale,
    count(*) FILTER (WHERE {has_text} AND {new} IS NULL) AS uncovered,
    count(*) FILTER (WHERE {new} IS NULL) AS without_vector
FROM {table} AS t
LEFT JOIN reembed.ledger AS l ON l.plan_id = {plan_id} AND l.pk = {ledger_key}
