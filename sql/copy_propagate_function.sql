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
        -- Only the vector changed: reembed's own write (its writers set reembed.writing), or the
        -- application's. Before the first cutover the application's column is its own; from then
        -- on an instance still on the other model re-saving a document must not leave that
        -- model's vector: the row is embedded again. The mirror keeps its own vector. Vectors are
        -- compared as text: the type's = lives in pgvector's schema, off the pinned path.
        IF coalesce(current_setting('reembed.writing', true), '') <> 'on'
                AND EXISTS (SELECT 1 FROM reembed.plans AS p WHERE p.id = {plan_id} AND p.cut_over_at IS NOT NULL)
                AND OLD.{vector}::text IS DISTINCT FROM NEW.{vector}::text THEN
            PERFORM reembed.mark_changed({plan_id}, {new_key});
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' OR {old_key} IS DISTINCT FROM {new_key} OR {text_changed} THEN
        -- pending for the target model, lease revoked, and after the first cutover stale for the source
        PERFORM reembed.mark_changed({plan_id}, {new_key});
    END IF;
    INSERT INTO {target} AS m ({columns}) OVERRIDING SYSTEM VALUE VALUES ({values})
    ON CONFLICT ({key}) DO UPDATE SET {assignments},
        {vector} = CASE WHEN {mirror_text} IS NOT DISTINCT FROM {excluded_text} THEN m.{vector} END;
    RETURN NULL;
END
$reembed$
