-- Rows of one plan finished (embedded or skipped) in the last {window} seconds: the current rate.
SELECT count(*) FILTER (WHERE state <> 'pending' AND changed_at > now() - make_interval(secs => {window})),
       min(changed_at) FILTER (WHERE state <> 'pending' AND changed_at > now() - make_interval(secs => {window}))
FROM reembed.ledger
WHERE plan_id = {plan_id}
