-- Rows of the table with no ledger entry (inserted while change tracking could not see them):
-- tracked from now on, pending.
INSERT INTO reembed.ledger (plan_id, pk)
SELECT {plan_id}, {ledger_key}
FROM {table} AS t
WHERE NOT EXISTS (SELECT 1 FROM reembed.ledger AS l WHERE l.plan_id = {plan_id} AND l.pk = {ledger_key})
ON CONFLICT (plan_id, pk) DO NOTHING
