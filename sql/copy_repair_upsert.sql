-- Rows of the application's table the mirror lacks or holds otherwise: every column but the
-- vector written as the application's table has it now, as the propagation would have. The
-- mirror's vector is kept when the embedded text and title are unchanged, cleared when not
-- (the caller marks those rows pending: they are embedded again). OVERRIDING SYSTEM VALUE
-- keeps identity values; the mirror has no trigger of the application's.
INSERT INTO {mirror} AS m ({columns}) OVERRIDING SYSTEM VALUE
SELECT {values}
FROM {source} AS t
JOIN {diverged} AS d ON d.source_pk = {source_key}
ON CONFLICT ({key}) DO UPDATE SET {assignments},
    {vector} = CASE WHEN {mirror_text} IS NOT DISTINCT FROM {excluded_text} THEN m.{vector} END
