-- Write one batch into the copy and record it, in one short transaction (copy strategy).
-- The rows come from the original as they are now, joined to the staged vectors; the guard is
-- the hash of the text embedded (a row changed since it was read is not written) and the lease,
-- re-checked under the ledger row's lock: the propagation revokes the lease of a row whose text
-- the application changes, so a batch computed from the old text skips it even when that change
-- commits while this statement runs. A row already in the copy (the propagation inserted it) gets
-- its vector and every other column as the original has it, which repairs a change made behind
-- the propagation's back (session_replication_role = replica); but when the copy row changed
-- after this statement's snapshot (the propagation wrote a newer version of the row in the
-- meantime) its columns are kept, not overwritten by this snapshot's older read of the
-- original. Rows with v NULL were skipped (empty text): they are copied without a vector. The
-- copy has no trigger of the application's.
-- Every join is by key, one batch row at a time: the claimed leases by = ANY of the batch's keys
-- (the planner estimates them at one, a lease owner its statistics never saw, and otherwise
-- scanned the whole ledger once per batch), the copy's rows by a LATERAL lookup (not a scan of
-- the whole copy), and the staged rows by the table's own typed key columns, never by the jsonb
-- ledger key, whose comparison cost more than anything else in the batch.
WITH claimed AS (
    SELECT {claimed_key}
    FROM reembed.ledger AS l CROSS JOIN LATERAL jsonb_to_record(l.pk) AS k({key_record})
    WHERE l.plan_id = {plan_id} AND l.pk = ANY (ARRAY(SELECT pk FROM {stage}))
      AND l.lease_owner = {owner} AND l.state = 'pending'
    FOR UPDATE OF l
), seen AS (
    -- the copy's rows as this statement's snapshot has them
    SELECT {copy_key} AS pk, md5({copy_row}::text) AS h
    FROM {stage} AS s CROSS JOIN LATERAL (SELECT * FROM {copy} AS c WHERE {copy_match} LIMIT 1) AS c
), written AS (
    INSERT INTO {copy} AS c ({columns}, {vector}) OVERRIDING SYSTEM VALUE
    SELECT {values}, s.v
    FROM {stage} AS s
    JOIN claimed AS k ON {claimed_match}
    JOIN {original} AS t ON {match}
    WHERE {hash} = s.hash
    ON CONFLICT ({key}) DO UPDATE SET {vector} = EXCLUDED.{vector}{refresh}
    RETURNING {written_key}
)
UPDATE reembed.ledger AS l
SET state = CASE WHEN s.v IS NULL THEN 'skipped' ELSE 'done' END,
    text_hash = s.hash,
    skip_reason = s.reason,
    embed_count = l.embed_count + CASE WHEN s.v IS NULL THEN 0 ELSE 1 END,
    lease_owner = NULL,
    lease_until = NULL,
    changed_at = now()
FROM written AS w JOIN {stage} AS s ON {written_match}
WHERE l.plan_id = {plan_id} AND l.pk = s.pk
RETURNING l.pk, s.v IS NULL AS skipped, l.embed_count
