-- verify/outliers: every new vector against the corpus centroid, and the original column the
-- same way as the baseline. An embedding model's vectors share a common direction; a vector from
-- elsewhere (random, another model, garbage) is almost orthogonal to it: cosine within a few
-- 1/sqrt(dims) of zero ({band}). A corpus of short, loosely related texts has a long low tail of
-- its own; it shows in the original column too, in units of each column's spread (median and
-- MAD of the cosines): a new vector is an outlier of the migration when it is below the band AND
-- further below its column's median than the original's lowest 1% lie below theirs, less one
-- unit ({z_floor_min} at least). {old} is NULL when the original column is gone; {old_table} holds
-- it (the new vectors' table, or the original table when the strategy copies the table).
WITH c AS (
    SELECT avg({new}::vector) AS new_centroid FROM {table} AS t
), s AS (
    SELECT {key} AS key, 1 - ({new}::vector <=> c.new_centroid) AS new_cos
    FROM {table} AS t, c
    WHERE {new} IS NOT NULL
), o AS (
    SELECT {old}::vector AS v FROM {old_table} AS o WHERE {old} IS NOT NULL
), os AS (
    SELECT 1 - (o.v <=> oc.centroid) AS old_cos FROM o, (SELECT avg(v) AS centroid FROM o) AS oc
), m AS (
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY new_cos) AS new_median, min(new_cos) AS new_min FROM s
), om AS (
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY old_cos) AS old_median,
           percentile_cont(0.01) WITHIN GROUP (ORDER BY old_cos) AS old_p01, min(old_cos) AS old_min
    FROM os
), d AS (
    SELECT m.new_median, m.new_min, om.old_median, om.old_p01, om.old_min,
           (SELECT 1.4826 * percentile_cont(0.5) WITHIN GROUP (ORDER BY abs(s.new_cos - m.new_median)) FROM s)
               AS new_spread,
           (SELECT 1.4826 * percentile_cont(0.5) WITHIN GROUP (ORDER BY abs(os.old_cos - om.old_median)) FROM os)
               AS old_spread
    FROM m, om
), z AS (
    SELECT s.key, s.new_cos, (s.new_cos - d.new_median) / greatest(d.new_spread, 1e-9) AS new_z,
           least({z_floor_min}, (d.old_p01 - d.old_median) / greatest(d.old_spread, 1e-9)) - 1 AS z_floor
    FROM s, d
)
SELECT count(*) FILTER (WHERE NOT (z.new_cos >= {band})) AS below_band,
       count(*) FILTER (WHERE NOT (z.new_cos >= {band}) AND z.new_z < z.z_floor) AS beyond_baseline,
       (array_agg(z.key ORDER BY z.new_cos) FILTER (WHERE NOT (z.new_cos >= {band})))[1:{limit}] AS below_band_examples,
       (array_agg(z.key ORDER BY z.new_cos) FILTER (WHERE NOT (z.new_cos >= {band}) AND z.new_z < z.z_floor))[1:{limit}]
           AS beyond_baseline_examples,
       max(z.z_floor) AS z_floor,
       (SELECT row_to_json(d) FROM d) AS distribution
FROM z
