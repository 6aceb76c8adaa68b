-- verify/sanity: every stored new vector has the planned dimension, finite values and unit norm.
SELECT count(*) AS vectors,
       count(*) FILTER (WHERE vector_dims({new}) <> {dims}) AS wrong_dims,
       count(*) FILTER (WHERE NOT (vector_norm({new}::vector) < 'Infinity'::float8)) AS non_finite,
       count(*) FILTER (WHERE abs(vector_norm({new}::vector) - 1) > {tolerance}) AS off_norm,
       min(vector_norm({new}::vector)) AS min_norm,
       max(vector_norm({new}::vector)) AS max_norm
FROM {table} AS t
WHERE {new} IS NOT NULL
