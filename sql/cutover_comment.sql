-- Column comments are stored per column number: the swapped-in column gets the original's.
COMMENT ON COLUMN {column} IS {comment}
