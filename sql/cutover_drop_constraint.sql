-- Drop a constraint by name (the helper check of the NOT NULL carry-over, or one being re-created).
ALTER TABLE {table} DROP CONSTRAINT {constraint}
