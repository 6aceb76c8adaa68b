-- Change propagation of a copy-strategy plan, from the table the application writes ({source})
-- to the table that mirrors it ({target}): the copy until cutover, the old table after it.
-- Runs in the application's own transaction, so nothing can fall between the two tables.
-- Every column but the vector column is copied; the mirror's vector is written only by
-- reembed, and is cleared when the text or title it was computed from changes (the row is
-- then pending in the ledger, and its lease, if a backfill holds it, is revoked: that batch's
-- vector is of the old text and its guarded write will skip the row).
-- SECURITY DEFINER with a pinned search_path: the application's role needs no rights on the
-- mirror or on schema reembed, and nothing on its search_path can capture the calls.
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $reembed$
BEGIN
    -- The ledger row first, then the mirror: a backfill writing this row holds its ledger row
    -- (FOR UPDATE) until it commits, so waiting here orders this change after its write.
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND {old_key} IS DISTINCT FROM {new_key}) THEN
        DELETE FROM reembed.ledger WHERE plan_id = {plan_id} AND pk = {old_key};
        DELETE FROM {target} AS m WHERE {match_old};
        IF TG_OP = 'DELETE' THEN
            RETURN NULL;
        END IF;
    ELSIF TG_OP = 'UPDATE' AND {unchanged} THEN
        RETURN NULL;  -- only the vector changed (reembed's own write, or the application's)
    END IF;
    IF TG_OP = 'INSERT' OR {old_key} IS DISTINCT FROM {new_key} OR {text_changed} THEN
        INSERT INTO reembed.ledger AS l (plan_id, pk, state)
        VALUES ({plan_id}, {new_key}, 'pending')
        ON CONFLICT (plan_id, pk) DO UPDATE
            SET state = 'pending', text_hash = NULL, skip_reason = NULL, changed_at = now(),
                lease_owner = NULL, lease_until = NULL;
    END IF;
    INSERT INTO {target} AS m ({columns}) OVERRIDING SYSTEM VALUE VALUES ({values})
    ON CONFLICT ({key}) DO UPDATE SET {assignments},
        {vector} = CASE WHEN {mirror_text} IS NOT DISTINCT FROM {excluded_text} THEN m.{vector} END;
    RETURN NULL;
END
$reembed$
