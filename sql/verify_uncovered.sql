-- verify/coverage: examples of rows with text but no new vector, with what the ledger says of them.
SELECT {key} AS key, l.state, l.skip_reason
FROM {table} AS t
LEFT JOIN reembed.ledger AS l ON l.plan_id = {plan_id} AND l.pk = {ledger_key}
WHERE {has_text} AND {new} IS NULL
ORDER BY 1
LIMIT {limit}
