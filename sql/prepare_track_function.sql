-- Change tracking of one plan. Every insert, and every update that changes the embedded text,
-- the title or the key, puts the row back in the ledger as pending (and, after the first
-- cutover, marks its source-model vector stale: reembed.mark_changed); a delete removes its
-- ledger row. From the first cutover on, an update that leaves the text alone but writes the
-- application's column {vector} does too, unless reembed wrote it (its writers set
-- reembed.writing for their transaction): an application instance still on the other model
-- re-saving a document must not leave that model's vector there. It never modifies the
-- application's row: whatever vector the application wrote, reembed embeds the row again.
-- SECURITY DEFINER with a pinned search_path: the application's role needs no rights on the
-- reembed schema, and nothing it puts on its search_path can capture the calls.
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $reembed$
BEGIN
    IF TG_OP = 'UPDATE' AND {unchanged} THEN
        -- Cheapest first. Before the first cutover the application's column is its own. Vectors
        -- are compared as text: the type's = lives in pgvector's schema, off the pinned path.
        IF coalesce(current_setting('reembed.writing', true), '') = 'on'
                OR NOT EXISTS (SELECT 1 FROM reembed.plans AS p WHERE p.id = {plan_id} AND p.cut_over_at IS NOT NULL)
                OR OLD.{vector}::text IS NOT DISTINCT FROM NEW.{vector}::text THEN
            RETURN NULL;
        END IF;
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND {old_key} IS DISTINCT FROM {new_key}) THEN
        DELETE FROM reembed.ledger WHERE plan_id = {plan_id} AND pk = {old_key};
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN NULL;
    END IF;
    PERFORM reembed.mark_changed({plan_id}, {new_key});
    RETURN NULL;
END
$reembed$
