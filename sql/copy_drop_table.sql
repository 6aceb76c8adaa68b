-- Drop a table reembed made (the copy, on abandon) or moved aside (the old table, on cleanup).
-- No CASCADE: anything still using it stops this with its name instead of vanishing.
DROP TABLE {table}
