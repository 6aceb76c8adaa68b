-- Stage one batch from four array parameters sent in binary (key, text hash, vector, skip
-- reason), so that staging goes down the same pipeline as the write instead of a COPY, which
-- pipeline mode cannot carry. The key columns are typed like the table's, from the ledger key
-- (jsonb_to_record with the key's types: populating a whole row of the table would fail on a
-- column of a NOT NULL domain).
INSERT INTO {stage} ({columns})
SELECT {key_columns}, u.pk, u.hash, u.v, u.reason
FROM unnest({pks}::jsonb[], {hashes}::text[], {vectors}::{vector_array}, {reasons}::text[]) AS u(pk, hash, v, reason)
CROSS JOIN LATERAL jsonb_to_record(u.pk) AS k({key_record})
