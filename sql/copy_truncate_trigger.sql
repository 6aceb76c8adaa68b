-- After the application truncates its table, the mirror is emptied in the same transaction.
CREATE OR REPLACE TRIGGER {trigger}
AFTER TRUNCATE ON {source}
FOR EACH STATEMENT EXECUTE FUNCTION {function}()
