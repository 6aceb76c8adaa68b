-- verify/freshness: each row's ledger entry against the row as it is now. A 'done' entry whose
-- text hash differs from the hash of the row's current text and title means the vector was
-- computed from other text (change tracking missed an update). Pending rows are not embedded yet.
-- A vector with no ledger entry at all has no known provenance.
SELECT count(*) FILTER (WHERE l.state = 'done') AS done,
       count(*) FILTER (WHERE l.state = 'pending') AS pending,
       count(*) FILTER (WHERE l.state = 'done' AND l.text_hash IS DISTINCT FROM {hash}) AS stale,
       count(*) FILTER (WHERE l.plan_id IS NULL AND {new} IS NOT NULL) AS untracked
FROM {table} AS t
LEFT JOIN reembed.ledger AS l ON l.plan_id = {plan_id} AND l.pk = {ledger_key}
