-- In the fill's write transaction, after the guarded write: the rows written now hold the source
-- model's vector of their current text. A later change marks them stale again (the tracking
-- waits for this transaction's row locks, user row first, then ledger row).
UPDATE reembed.ledger
SET source_stale = false
WHERE plan_id = {plan_id} AND pk = ANY ({keys}) AND source_stale
