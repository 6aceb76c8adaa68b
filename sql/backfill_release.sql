-- Give back the leases of claimed rows that were not written (changed meanwhile, or not sent):
-- they stay pending and the next claim takes them again.
UPDATE reembed.ledger
SET lease_owner = NULL, lease_until = NULL
WHERE plan_id = {plan_id} AND pk = ANY ({keys}) AND lease_owner = {owner} AND state = 'pending'
