-- The repaired rows whose embedded text changed (or that the mirror lacked): pending again for
-- the target model, their leases revoked, stale for the source model after the first cutover.
SELECT count(*) FILTER (WHERE d.mirror_pk IS NOT NULL) AS changed,
       count(*) FILTER (WHERE d.mirror_pk IS NULL) AS inserted
FROM {diverged} AS d
CROSS JOIN LATERAL (SELECT reembed.mark_changed({plan_id}, d.source_pk)) AS marked
WHERE d.source_pk IS NOT NULL AND d.text_changed
