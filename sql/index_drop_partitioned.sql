-- A partitioned index cannot be dropped CONCURRENTLY: dropped with its partitions' indexes in one
-- statement, under lock_timeout (the caller retries with jitter).
DROP INDEX IF EXISTS {index}
