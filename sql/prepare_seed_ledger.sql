-- One pending ledger row per existing row, numbered in page-striped order: the first row of
-- every heap page, then the second row of every page, and so on. Writing in this order lets the
-- dead version left on a page be pruned before the next row of that page is updated, so most
-- updates stay HOT (no index insert, no HNSW insert). Rows tracked already are left alone.
INSERT INTO reembed.ledger (plan_id, pk, seq)
SELECT {plan_id}, s.pk, nextval('reembed.ledger_seq')
FROM (
    SELECT {key} AS pk
    FROM {table} AS t
    ORDER BY (t.ctid::text::point)[1], (t.ctid::text::point)[0]
) AS s
ON CONFLICT (plan_id, pk) DO NOTHING
