-- A fingerprint of everything bound to one column: each dependent catalog row and its xmin
-- (any ALTER / CREATE OR REPLACE writes a new row version), the column's own row (grants,
-- statistics target, NOT NULL), its comment and the table's publication entries. Taken before
-- the definitions are captured and again under the lock: equal means the capture still holds,
-- so the lock is not spent re-reading every definition.
SELECT md5(coalesce(string_agg(item, ',' ORDER BY item), ''))
FROM (
    SELECT 'attr:' || a.xmin::text AS item
    FROM pg_attribute a WHERE a.attrelid = {table_oid} AND a.attnum = {attnum}
    UNION ALL
    SELECT 'dep:' || d.classid::text || '.' || d.objid::text || '.' || coalesce(CASE d.classid
        WHEN 'pg_rewrite'::regclass THEN (SELECT r.xmin::text || '/' || c.xmin::text FROM pg_rewrite r
                                          JOIN pg_class c ON c.oid = r.ev_class WHERE r.oid = d.objid)
        WHEN 'pg_proc'::regclass THEN (SELECT xmin::text FROM pg_proc WHERE oid = d.objid)
        WHEN 'pg_policy'::regclass THEN (SELECT xmin::text FROM pg_policy WHERE oid = d.objid)
        WHEN 'pg_trigger'::regclass THEN (SELECT xmin::text FROM pg_trigger WHERE oid = d.objid)
        WHEN 'pg_constraint'::regclass THEN (SELECT xmin::text FROM pg_constraint WHERE oid = d.objid)
        WHEN 'pg_statistic_ext'::regclass THEN (SELECT xmin::text FROM pg_statistic_ext WHERE oid = d.objid)
        WHEN 'pg_class'::regclass THEN (SELECT xmin::text FROM pg_class WHERE oid = d.objid)
        WHEN 'pg_attrdef'::regclass THEN (SELECT xmin::text FROM pg_attrdef WHERE oid = d.objid)
        END, '-')
    FROM pg_depend d
    WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = {table_oid} AND d.refobjsubid = {attnum}
    UNION ALL
    SELECT 'comment:' || x.xmin::text FROM pg_description x
    WHERE x.objoid = {table_oid} AND x.classoid = 'pg_class'::regclass AND x.objsubid = {attnum}
    UNION ALL
    SELECT 'pub:' || pr.oid::text || '.' || pr.xmin::text FROM pg_publication_rel pr WHERE pr.prrelid = {table_oid}
) AS items
