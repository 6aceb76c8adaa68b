-- Each try waits at most this long for the lock; readers queue behind the waiting lock only that long.
SELECT set_config('lock_timeout', {timeout}, true)
