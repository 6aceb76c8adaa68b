-- Mirror rows whose row the application's table no longer has (deleted, or its key changed,
-- behind the propagation's back): removed from the mirror and from the ledger.
WITH gone AS (
    DELETE FROM {mirror} AS m USING {diverged} AS d
    WHERE d.source_pk IS NULL AND d.mirror_pk = {mirror_key}
    RETURNING d.mirror_pk AS pk
)
DELETE FROM reembed.ledger AS l USING gone AS g WHERE l.plan_id = {plan_id} AND l.pk = g.pk
