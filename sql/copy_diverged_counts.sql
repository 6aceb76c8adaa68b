-- What the comparison found (sql/copy_diverged.sql): all rows, rows gone from the application's
-- table, and rows that differ only in columns that are not embedded (their vector is kept).
SELECT count(*) AS diverged,
       count(*) FILTER (WHERE source_pk IS NULL) AS deleted,
       count(*) FILTER (WHERE source_pk IS NOT NULL AND mirror_pk IS NOT NULL AND NOT text_changed) AS repaired
FROM {diverged}
