-- A fingerprint of everything the copy strategy's swap carries from a table: its ACL, owner,
-- row security and replica identity, column ACLs and comments, policies, triggers, constraints
-- on it and pointing at it, publication entries, and whatever depends on it. Compared under the
-- lock with the value read before: equal means the capture taken before the lock is still exact.
SELECT md5(concat_ws('|',
    (SELECT row(relacl, relowner, relrowsecurity, relforcerowsecurity, relreplident)::text
     FROM pg_class WHERE oid = {table_oid}),
    (SELECT string_agg(row(attname, attacl)::text, ',' ORDER BY attnum)
     FROM pg_attribute WHERE attrelid = {table_oid} AND attnum > 0),
    (SELECT string_agg(row(objsubid, description)::text, ',' ORDER BY objsubid)
     FROM pg_description WHERE objoid = {table_oid} AND classoid = 'pg_class'::regclass),
    (SELECT string_agg(row(oid, polname, polcmd, polroles, pg_get_expr(polqual, polrelid),
                           pg_get_expr(polwithcheck, polrelid))::text, ',' ORDER BY oid)
     FROM pg_policy WHERE polrelid = {table_oid}),
    (SELECT string_agg(row(oid, tgname, tgenabled)::text, ',' ORDER BY oid)
     FROM pg_trigger WHERE tgrelid = {table_oid}),
    (SELECT string_agg(row(oid, conname, convalidated)::text, ',' ORDER BY oid)
     FROM pg_constraint WHERE conrelid = {table_oid} OR confrelid = {table_oid}),
    (SELECT string_agg(row(prpubid, prattrs, prqual)::text, ',' ORDER BY prpubid)
     FROM pg_publication_rel WHERE prrelid = {table_oid}),
    (SELECT string_agg(row(classid, objid, objsubid, deptype)::text, ',' ORDER BY classid, objid, objsubid)
     FROM pg_depend WHERE refclassid = 'pg_class'::regclass AND refobjid = {table_oid})
))
