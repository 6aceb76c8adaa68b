-- The statistics target is stored per column number: carry it to the swapped-in column.
ALTER TABLE {table} ALTER COLUMN {column} SET STATISTICS {target}
