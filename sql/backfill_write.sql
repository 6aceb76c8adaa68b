-- Write one batch and record it, in one short transaction.
-- The write guard: a row whose text or title changed since it was read (hash differs) is not
-- written and stays pending; so is a row whose lease this process lost. A row with v NULL was
-- skipped (empty text): its vector column is cleared so no vector of an older text survives.
-- Rows are locked user row first, then ledger row: the same order as the tracking trigger.
-- The leases are looked up by = ANY of the batch's keys (asked as EXISTS, the planner estimated
-- this owner's leased rows at one and scanned the whole ledger once per batch) and matched to the
-- staged rows by the table's typed key columns, not by comparing jsonb ledger keys.
WITH leased AS (
    SELECT {leased_key}
    FROM reembed.ledger AS o CROSS JOIN LATERAL jsonb_to_record(o.pk) AS k({key_record})
    WHERE o.plan_id = {plan_id} AND o.pk = ANY (ARRAY(SELECT pk FROM {stage}))
      AND o.lease_owner = {owner} AND o.state = 'pending'
), written AS (
    UPDATE {table} AS t
    SET {target} = s.v
    FROM {stage} AS s JOIN leased AS k ON {leased_match}
    WHERE {match}
      AND {hash} = s.hash
    RETURNING s.pk, s.hash, s.v IS NULL AS skipped, s.reason
)
UPDATE reembed.ledger AS l
SET state = CASE WHEN w.skipped THEN 'skipped' ELSE 'done' END,
    text_hash = w.hash,
    skip_reason = w.reason,
    embed_count = l.embed_count + CASE WHEN w.skipped THEN 0 ELSE 1 END,
    lease_owner = NULL,
    lease_until = NULL,
    changed_at = now()
FROM written AS w
WHERE l.plan_id = {plan_id} AND l.pk = w.pk
RETURNING l.pk, w.skipped, l.embed_count
