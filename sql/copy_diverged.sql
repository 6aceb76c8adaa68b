-- Rows on which the table the application writes ({source}) and its mirror ({mirror}: the copy
-- before cutover, the table moved aside after it) disagree on any column but the vector: changed,
-- inserted or deleted where the propagation's trigger did not fire (a session with
-- session_replication_role = replica such as pg_restore or a logical-replication apply, or the
-- trigger disabled). One scan of each table, joined on the key, in the caller's REPEATABLE READ
-- snapshot: the propagation keeps both tables equal at every commit it sees, so what differs
-- in one snapshot is exactly what it did not see. Generated columns are compared through
-- their inputs; text_changed says the embedded text (or title) differs, so the mirror's
-- vector is not of the row's text any more. A row the mirror lacks while the ledger has it
-- pending is the backfill's to write (a cutover tried before the run finished), not a miss.
CREATE TEMP TABLE {diverged} ON COMMIT DROP AS
SELECT CASE WHEN {in_source} THEN {source_key} END AS source_pk,
       CASE WHEN {in_mirror} THEN {mirror_key} END AS mirror_pk,
       NOT {in_mirror} OR {source_hash} IS DISTINCT FROM {mirror_hash} AS text_changed
FROM {source} AS t
FULL JOIN {mirror} AS m ON {match}
WHERE {source_row} IS DISTINCT FROM {mirror_row}
  AND NOT (NOT {in_mirror} AND EXISTS (SELECT 1 FROM reembed.ledger AS l
                                       WHERE l.plan_id = {plan_id} AND l.pk = {source_key} AND l.state = 'pending'))
