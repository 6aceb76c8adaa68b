-- Drop one of the plan's vector indexes inside the drop's locked transaction (cleanup / abandon):
-- the table's ACCESS EXCLUSIVE lock is held already, so this is catalog work, and a refusal of the
-- re-check leaves the index (and a rollback) in place.
DROP INDEX IF EXISTS {index}
