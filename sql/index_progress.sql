-- The index build's progress as PostgreSQL and pgvector report it: the phase, tuples done of
-- total, and blocks for the phases that count no tuples.
SELECT phase, tuples_total, tuples_done, blocks_total, blocks_done
FROM pg_stat_progress_create_index
WHERE pid = {pid}
