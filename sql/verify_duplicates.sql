-- verify/sanity: one vector stored for rows with different texts (a batch written to the wrong
-- rows, or one answer reused). Rows with identical text and title may share a vector. Grouped by
-- an md5 of the vector's binary form: 16 bytes a row to hash, not a 3 kB vector to sort.
SELECT d.rows, d.keys, count(*) OVER () AS groups, sum(d.rows) OVER () AS rows_in_groups
FROM (
    SELECT count(*) AS rows, (array_agg({key} ORDER BY {key}))[1:5] AS keys
    FROM {table} AS t
    WHERE {new} IS NOT NULL
    GROUP BY md5(vector_send({new}::vector))
    HAVING count(DISTINCT {hash}) > 1
) AS d
ORDER BY d.rows DESC
LIMIT {limit}
