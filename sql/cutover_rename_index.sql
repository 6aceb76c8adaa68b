-- The index on the swapped-in column takes the original index's name (clients re-create indexes by name).
ALTER INDEX {index} RENAME TO {new_name}
