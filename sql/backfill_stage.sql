-- Per-connection staging table for one batch's vectors, typed like the table's key (the writes
-- join it to their claimed rows by those columns, not by the jsonb ledger key); emptied at
-- every commit. Staging goes down the write's pipeline from binary array parameters
-- (sql/backfill_stage_rows.sql).
CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS
SELECT {key_columns}, NULL::jsonb AS pk, NULL::text AS hash, NULL::{vtype} AS v, NULL::text AS reason
FROM {table} AS t
WITH NO DATA
