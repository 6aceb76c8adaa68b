-- Rows whose place for the old model's vectors does not hold that model's vector of their
-- current text: rows with text and no old-model vector (written after cutover, when only the new
-- column received writes), and rows the application inserted or changed since the plan's first
-- cutover (the ledger's source_stale, set by the change tracking), whatever vector they hold.
-- `reembed run PLAN --rollback-fill` embeds them with the source model.
SELECT count(*) OVER () AS total, {key}::text AS key
FROM {table} AS t
LEFT JOIN reembed.ledger AS l ON l.plan_id = {plan_id} AND l.pk = {ledger_key}
WHERE ({old} IS NULL AND {has_text}) OR coalesce(l.source_stale, false)
ORDER BY {order}
LIMIT {limit}
