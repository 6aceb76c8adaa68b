-- verify/sanity: examples of vectors with the wrong dimension or a norm away from 1.
SELECT {key} AS key, vector_dims({new}) AS dims, vector_norm({new}::vector) AS norm
FROM {table} AS t
WHERE {new} IS NOT NULL
  AND (vector_dims({new}) <> {dims} OR NOT (abs(vector_norm({new}::vector) - 1) <= {tolerance}))
ORDER BY 1
LIMIT {limit}
