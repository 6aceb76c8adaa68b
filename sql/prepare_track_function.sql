-- Change tracking of one plan. Every insert, and every update that changes the embedded text,
-- the title or the key, puts the row back in the ledger as pending; a delete removes its ledger
-- row. It never modifies the application's row (the application may write its own vectors).
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
    INSERT INTO reembed.ledger AS l (plan_id, pk, state)
    VALUES ({plan_id}, {new_key}, 'pending')
    ON CONFLICT (plan_id, pk) DO UPDATE
        SET state = 'pending', text_hash = NULL, skip_reason = NULL, changed_at = now();
    RETURN NULL;
END
$reembed$
