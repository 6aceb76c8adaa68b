-- verify: a deterministic sample of rows that have text and a new vector (and their old one, the
-- baseline some checks measure the original column by; NULL when it is gone). Ordering by a keyed
-- md5 of the primary key gives the same rows for the same seed, whatever the physical order.
-- Only rows whose vector was embedded from the text they have now (ledger 'done', same hash):
-- a row the live application changed is pending and is re-embedded by the guarded path (run or
-- cutover's catch-up) before it counts; its old vector says nothing about the migration.
SELECT {key} AS key, {text} AS text, {title} AS title, {new} AS vector, {old} AS old_vector
FROM {table} AS t
JOIN reembed.ledger AS l ON l.plan_id = {plan_id} AND l.pk = {ledger_key}
{old_join}
WHERE {new} IS NOT NULL AND {has_text} AND l.state = 'done' AND l.text_hash = {hash}
ORDER BY md5({key} || {seed})
LIMIT {limit}
