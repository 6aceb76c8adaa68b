-- Claim up to {limit} pending rows as a lease: rows nobody holds, or whose holder's lease ran
-- out (a crashed or stuck process), in ledger order (page-striped for the seeded rows).
-- {changed_before} bounds a catch-up sweep to rows that changed before it began, so a run
-- ends even while the application keeps changing rows.
-- SKIP LOCKED lets any number of processes on any number of machines claim at once without
-- waiting for each other; the transaction is this one statement.
UPDATE reembed.ledger AS l
SET lease_owner = {owner}, lease_until = now() + make_interval(secs => {lease_seconds})
WHERE l.plan_id = {plan_id} AND l.pk IN (
    SELECT c.pk
    FROM reembed.ledger AS c
    WHERE c.plan_id = {plan_id} AND c.state = 'pending'
      AND (c.lease_until IS NULL OR c.lease_until < now())
      AND c.changed_at <= {changed_before}
    ORDER BY c.seq
    LIMIT {limit}
    FOR UPDATE SKIP LOCKED
)
RETURNING l.pk, l.seq
