-- Write one batch of source-model vectors where the old vectors are (column strategy). Guarded by
-- the hash of the text embedded: a row changed since it was read is not written and stays in the
-- fill's work list. A staged NULL clears the old vector of a row whose text went blank. Returns
-- the keys written; the fill marks them fresh in the ledger in the same transaction.
UPDATE {table} AS t
SET {column} = s.v
FROM {stage} AS s
WHERE {match}
  AND {hash} = s.hash
RETURNING s.pk
