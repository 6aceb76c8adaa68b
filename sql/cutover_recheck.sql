-- Re-check under the lock, cheap by construction (the partial index on pending rows): a row
-- inserted or whose text changed since the gate is pending again through change tracking.
SELECT count(*) FROM reembed.ledger WHERE plan_id = {plan_id} AND state = 'pending'
