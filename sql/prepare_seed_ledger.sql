-- One pending ledger row per existing row, numbered in the order the strategy writes best
-- ({order}): the column strategy's page-striped order (the first row of every heap page, then
-- the second row of every page, ...) lets the dead version left on a page be pruned before the
-- next row of that page is updated, so most updates stay HOT (no index insert, no HNSW insert);
-- the copy strategy's physical order reads the original's pages one after the other and lays
-- the copy out like it. Rows tracked already are left alone.
INSERT INTO reembed.ledger (plan_id, pk, seq)
SELECT {plan_id}, s.pk, nextval('reembed.ledger_seq')
FROM (
    SELECT {key} AS pk
    FROM {table} AS t
    ORDER BY {order}
) AS s
ON CONFLICT (plan_id, pk) DO NOTHING
