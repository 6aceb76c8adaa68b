-- Session settings for the build: memory for the graph (rows x (4*dims+8) x 1.3, capped) and
-- parallel maintenance workers. Session-level because CONCURRENTLY cannot run in a transaction.
SELECT set_config('maintenance_work_mem', {memory}, false), set_config('max_parallel_maintenance_workers', {workers}, false)
