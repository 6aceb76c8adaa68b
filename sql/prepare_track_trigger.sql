-- Fire the tracking function after every insert, delete and update. Every UPDATE, not only
-- `UPDATE OF` the text: an application's BEFORE trigger may derive the text from another
-- column, and a generated column changes with its inputs without being named in the SET list;
-- the function compares OLD and NEW of the text, title, their inputs and the key, and returns
-- at once when none changed. AFTER ... FOR EACH ROW: it sees the final values and never changes
-- the row. CREATE OR REPLACE keeps prepare idempotent.
CREATE OR REPLACE TRIGGER {trigger}
AFTER INSERT OR DELETE OR UPDATE ON {table}
FOR EACH ROW EXECUTE FUNCTION {function}()
