-- Drop an index (an INVALID leftover, or the shadow index on abandon) without blocking reads or writes.
DROP INDEX CONCURRENTLY IF EXISTS {index}
