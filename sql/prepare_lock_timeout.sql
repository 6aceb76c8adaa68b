-- Each DDL try waits at most this long for its lock, so it never queues behind a long
-- transaction while every later reader queues behind it; the caller retries with jitter.
SELECT set_config('lock_timeout', {timeout}, true)
