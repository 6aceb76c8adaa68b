-- Take the swap's lock: views first (readers lock view then table, so the same order cannot
-- deadlock with them), then the table. lock_timeout bounds how long readers queue behind us.
LOCK TABLE {relations} IN ACCESS EXCLUSIVE MODE
