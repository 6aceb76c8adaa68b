-- Before writing rows of a mirror (the table the propagation writes: the copy, or the old table
-- after cutover), lock their ledger rows: the propagation takes a row's ledger row first and its
-- mirror row second, so a writer of the mirror that also marks the ledger (the rollback fill, the
-- repair of what the propagation missed) must take them in that order too, or it and an
-- application write of the same row wait for each other.
SELECT l.pk FROM reembed.ledger AS l
WHERE l.plan_id = {plan_id} AND l.pk IN ({keys})
ORDER BY l.pk
FOR UPDATE OF l
