-- No CASCADE: anything still bound to the old column stops this with its name instead of vanishing.
-- Frees no space until the table is rewritten (VACUUM FULL or pg_repack).
ALTER TABLE {table} DROP COLUMN {column}
