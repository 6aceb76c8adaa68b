-- Rows with text but no vector of the old model: written after cutover, when only the new
-- column received writes. `reembed run PLAN --rollback-fill` embeds them with the source model.
SELECT count(*) OVER () AS total, {key}::text AS key
FROM {table} AS t
WHERE {old} IS NULL AND {has_text}
ORDER BY {order}
LIMIT {limit}
