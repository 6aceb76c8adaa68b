-- Rows the ledger counts as embedded whose text changed since, or whose new vector is gone,
-- without change tracking seeing it (its trigger does not fire for a session with
-- session_replication_role = replica, such as a logical-replication apply or pg_restore, nor
-- while disabled): put back as pending, so that the next `reembed run` embeds them again.
UPDATE reembed.ledger AS l
SET state = 'pending', text_hash = NULL, skip_reason = NULL, changed_at = now()
FROM {table} AS t
WHERE l.plan_id = {plan_id} AND l.pk = {ledger_key} AND l.state = 'done'
  AND (l.text_hash IS DISTINCT FROM {hash} OR {new} IS NULL)
