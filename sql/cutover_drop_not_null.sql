-- The column moved aside no longer receives writes: rows inserted from now on leave it NULL.
ALTER TABLE {table} ALTER COLUMN {column} DROP NOT NULL
