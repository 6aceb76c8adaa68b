-- Fire the tracking function after every insert, delete, and update of the embedded text,
-- title or key columns. AFTER ... FOR EACH ROW: it sees committed-to-be values and never
-- changes the row. CREATE OR REPLACE keeps prepare idempotent.
CREATE OR REPLACE TRIGGER {trigger}
AFTER INSERT OR DELETE OR UPDATE OF {columns} ON {table}
FOR EACH ROW EXECUTE FUNCTION {function}()
