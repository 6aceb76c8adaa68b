-- What to embed for the claimed rows: the text and title as they are now, and the md5 of
-- exactly that (the write guard compares it). Rows deleted since the claim are simply absent.
SELECT {key} AS pk, {key_columns}, {text} AS text, {title} AS title, {hash} AS hash
FROM jsonb_to_recordset({keys}) AS k({key_record})
JOIN {table} AS t ON {match}
