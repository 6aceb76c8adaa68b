-- What the column moved aside occupies (inline and TOASTed): the space a table rewrite would return.
SELECT coalesce(sum(pg_column_size({column})), 0)::bigint, count({column}) FROM {table}
