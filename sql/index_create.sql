-- Build an index on the new vectors without blocking writes: the original's definition from
-- USING on (or the parts of the one --index asked for), reading the new column.
-- CONCURRENTLY cannot run inside a transaction; an interrupted build leaves an INVALID index
-- behind, which `reembed index` drops and rebuilds. A partitioned table's index is created ON
-- ONLY the table, without CONCURRENTLY and without a build: each partition's index is built
-- CONCURRENTLY and attached to it, and it is valid once every partition has one.
CREATE {unique}INDEX {concurrently}{index} ON {only}{table} {body}
