-- Write one batch and record it, in one short transaction.
-- The write guard: a row whose text or title changed since it was read (hash differs) is not
-- written and stays pending; so is a row whose lease this process lost. A row with v NULL was
-- skipped (empty text): its vector column is cleared so no vector of an older text survives.
-- Rows are locked user row first, then ledger row: the same order as the tracking trigger.
WITH written AS (
    UPDATE {table} AS t
    SET {target} = s.v
    FROM {stage} AS s
    WHERE {match}
      AND {hash} = s.hash
      AND EXISTS (SELECT 1 FROM reembed.ledger AS o
                  WHERE o.plan_id = {plan_id} AND o.pk = s.pk AND o.lease_owner = {owner} AND o.state = 'pending')
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
