-- Step 3: SET NOT NULL finds the valid check and skips its own scan (the check is dropped after).
ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL
