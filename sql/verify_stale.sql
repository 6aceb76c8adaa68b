-- verify/freshness: examples of rows whose vector was computed from text other than their current one.
SELECT {key} AS key, l.changed_at
FROM {table} AS t
JOIN reembed.ledger AS l ON l.plan_id = {plan_id} AND l.pk = {ledger_key}
WHERE l.state = 'done' AND l.text_hash IS DISTINCT FROM {hash}
ORDER BY l.changed_at, 1
LIMIT {limit}
