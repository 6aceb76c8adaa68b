-- verify/coverage: rows the backfill skipped, grouped by the reason it recorded.
SELECT coalesce(skip_reason, '(no reason recorded)') AS reason, count(*) AS rows,
       (array_agg(pk::text ORDER BY seq))[1:{examples}] AS examples
FROM reembed.ledger
WHERE plan_id = {plan_id} AND state = 'skipped'
GROUP BY 1
ORDER BY 2 DESC, 1
