-- Change tracking of one plan. Every insert, and every update that changes the embedded text,
-- the title or the key, puts the row back in the ledger as pending (and, after the first
-- cutover, marks its source-model vector stale: reembed.mark_changed); a delete removes its
-- ledger row. It never modifies the application's row: whatever vector the application wrote,
-- reembed embeds the row again.
-- SECURITY DEFINER with a pinned search_path: the application's role needs no rights on the
-- reembed schema, and nothing it puts on its search_path can capture the calls.
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $reembed$
BEGIN
    IF TG_OP = 'UPDATE' AND {unchanged} THEN
        RETURN NULL;
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
