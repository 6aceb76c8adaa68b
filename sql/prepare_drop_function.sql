-- The plan's tracking function, once no trigger uses it.
DROP FUNCTION IF EXISTS {function}()
