-- NOT NULL without a table scan, step 1: a NOT VALID check enforces every new write at once.
ALTER TABLE {table} ADD CONSTRAINT {constraint} CHECK ({column} IS NOT NULL) NOT VALID
