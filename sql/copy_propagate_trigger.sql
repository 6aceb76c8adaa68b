-- Fire the propagation after every row the application inserts, updates or deletes.
-- AFTER ... FOR EACH ROW: it sees the row as the application's BEFORE triggers left it.
CREATE OR REPLACE TRIGGER {trigger}
AFTER INSERT OR UPDATE OR DELETE ON {source}
FOR EACH ROW EXECUTE FUNCTION {function}()
