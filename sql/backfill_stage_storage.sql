-- Keep a staged row in its page. By default a row over 2 kB (any 768-dim vector) has its vector,
-- and then even its key and hash, written to the temporary table's TOAST and read back from it,
-- only to be copied on: the vector stays inline when it fits a page ({vector_storage}), every other
-- variable-length column too unless the row cannot fit otherwise (MAIN).
ALTER TABLE {stage} ALTER COLUMN v SET STORAGE {vector_storage}{others}
