-- Extend the leases this process still holds (batches waiting on the provider's quota).
UPDATE reembed.ledger
SET lease_until = now() + make_interval(secs => {lease_seconds})
WHERE plan_id = {plan_id} AND pk = ANY ({keys}) AND lease_owner = {owner} AND state = 'pending'
