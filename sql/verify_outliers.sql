-- verify/outliers: every new vector against the corpus centroid. An embedding model's vectors
-- share a common direction; a vector from elsewhere (random, another model, garbage) is
-- almost orthogonal to it: cosine within a few 1/sqrt(dims) of zero.
WITH c AS (
    SELECT avg({new}::vector) AS centroid FROM {table} AS t WHERE {new} IS NOT NULL
), s AS (
    SELECT {key} AS key, 1 - ({new}::vector <=> c.centroid) AS cosine
    FROM {table} AS t, c
    WHERE {new} IS NOT NULL
)
SELECT count(*) FILTER (WHERE NOT (cosine >= {band})) AS outliers,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY cosine) AS median,
       min(cosine) AS min_cosine,
       (array_agg(key ORDER BY cosine) FILTER (WHERE NOT (cosine >= {band})))[1:{limit}] AS examples
FROM s
