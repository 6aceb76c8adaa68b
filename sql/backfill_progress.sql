-- Ledger counts of one plan: what status and the progress bar show.
SELECT count(*) AS rows_total,
       count(*) FILTER (WHERE state = 'done') AS rows_embedded,
       count(*) FILTER (WHERE state = 'pending') AS rows_pending,
       count(*) FILTER (WHERE state = 'skipped') AS rows_skipped,
       count(*) FILTER (WHERE state = 'pending' AND lease_until >= now()) AS leases_held,
       count(DISTINCT lease_owner) FILTER (WHERE state = 'pending' AND lease_until >= now()) AS lease_holders,
       count(*) FILTER (WHERE embed_count > 1) AS rows_embedded_more_than_once,
       coalesce(sum(embed_count), 0) AS embeddings_written
FROM reembed.ledger
WHERE plan_id = {plan_id}
