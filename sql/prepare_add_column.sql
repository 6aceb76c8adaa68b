-- The shadow column that will hold the target model's vectors. No default, so this is a
-- catalog change only (no table rewrite); it still needs a brief ACCESS EXCLUSIVE lock.
ALTER TABLE {table} ADD COLUMN {shadow} {type}
