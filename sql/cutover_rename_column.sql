-- Renames change only the catalog: milliseconds whatever the table size.
ALTER TABLE {table} RENAME COLUMN {old_name} TO {new_name}
