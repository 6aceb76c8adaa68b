-- Ledger rows of claimed rows that no longer exist in the table (deleted while tracking was off,
-- or by TRUNCATE, which fires no row trigger): nothing to embed, drop them.
DELETE FROM reembed.ledger AS l
WHERE l.plan_id = {plan_id} AND l.pk = ANY ({keys}) AND l.lease_owner = {owner}
  AND NOT EXISTS (SELECT 1 FROM jsonb_to_record(l.pk) AS k({key_record}) JOIN {table} AS t ON {match})
