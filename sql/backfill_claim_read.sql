-- Claim a batch and read what to embed for it, in one statement (one round trip): the text and
-- title of each claimed row as they are now, and the md5 of exactly that (the write guard
-- compares it). A claimed row deleted since it was tracked comes back with NULL key columns.
-- {claim} is sql/backfill_claim.sql; its lease commits with this statement.
WITH claimed AS (
    {claim}
)
SELECT c.pk, {key_columns}, {text} AS text, {title} AS title, {hash} AS hash
FROM claimed AS c
CROSS JOIN LATERAL jsonb_to_record(c.pk) AS k({key_record})
LEFT JOIN {table} AS t ON {match}
ORDER BY c.seq
