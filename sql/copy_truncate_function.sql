-- TRUNCATE fires no row trigger: empty the mirror and the plan's ledger with it.
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $reembed$
BEGIN
    TRUNCATE {target};
    DELETE FROM reembed.ledger WHERE plan_id = {plan_id};
    RETURN NULL;
END
$reembed$
