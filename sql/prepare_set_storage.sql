-- Same storage strategy as the original vector column (the application may have tuned it).
ALTER TABLE {table} ALTER COLUMN {shadow} SET STORAGE {storage}
