-- Remove the change tracking of a plan from the user's table (cleanup / abandon).
DROP TRIGGER IF EXISTS {trigger} ON {table}
