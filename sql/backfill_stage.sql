-- Per-connection staging table for one batch's vectors, typed like the table's key; emptied
-- at every commit. Binary COPY into it is the fastest way in (see DESIGN.md).
CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS
SELECT {key_columns}, NULL::jsonb AS pk, NULL::text AS hash, NULL::{vtype} AS v, NULL::text AS reason
FROM {table} AS t
WITH NO DATA
