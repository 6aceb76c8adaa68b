-- Write one batch into the copy and record it, in one short transaction (copy strategy).
-- The rows come from the original as they are now, joined to the staged vectors; the guard is
-- the hash of the text embedded (a row changed since it was read is not written) and the lease,
-- re-checked under the ledger row's lock: the propagation revokes the lease of a row whose text
-- the application changes, so a batch computed from the old text skips it even when that change
-- commits while this statement runs. A row the propagation inserted first (or changed since) is
-- kept as the propagation left it; only its vector is set. Rows with v NULL were skipped (empty
-- text): they are copied without a vector. The copy has no trigger of the application's.
WITH claimed AS (
    SELECT l.pk FROM reembed.ledger AS l
    WHERE l.plan_id = {plan_id} AND l.pk IN (SELECT pk FROM {stage})
      AND l.lease_owner = {owner} AND l.state = 'pending'
    FOR UPDATE OF l
), written AS (
    INSERT INTO {copy} AS c ({columns}, {vector}) OVERRIDING SYSTEM VALUE
    SELECT {values}, s.v
    FROM {stage} AS s
    JOIN claimed AS k ON k.pk = s.pk
    JOIN {original} AS t ON {match}
    WHERE {hash} = s.hash
    ON CONFLICT ({key}) DO UPDATE SET {vector} = EXCLUDED.{vector}
    RETURNING {copy_key} AS pk
)
UPDATE reembed.ledger AS l
SET state = CASE WHEN s.v IS NULL THEN 'skipped' ELSE 'done' END,
    text_hash = s.hash,
    skip_reason = s.reason,
    embed_count = l.embed_count + CASE WHEN s.v IS NULL THEN 0 ELSE 1 END,
    lease_owner = NULL,
    lease_until = NULL,
    changed_at = now()
FROM written AS w JOIN {stage} AS s ON s.pk = w.pk
WHERE l.plan_id = {plan_id} AND l.pk = w.pk
RETURNING l.pk, s.v IS NULL AS skipped, l.embed_count
