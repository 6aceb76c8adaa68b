-- The next batch of the rollback fill's walk, in key order after the last one: the rows
-- rollback_missing.sql lists, with their text and title as they are now and the hash the write
-- is guarded by. Blank rows come too when they are stale: their old vector must be cleared.
SELECT {key} AS pk, {key_columns}, {text} AS text, {title} AS title, {hash} AS hash
FROM {table} AS t
LEFT JOIN reembed.ledger AS l ON l.plan_id = {plan_id} AND l.pk = {key}
WHERE (({old} IS NULL AND {has_text}) OR coalesce(l.source_stale, false)) AND {after}
ORDER BY {key_columns}
LIMIT {limit}
