-- Build the vector index on the shadow column without blocking writes.
-- CONCURRENTLY cannot run inside a transaction; an interrupted build leaves an INVALID index
-- behind, which `reembed index` drops and rebuilds.
CREATE INDEX CONCURRENTLY {index} ON {table} USING {method} ({column} {opclass}) {options} {predicate}
