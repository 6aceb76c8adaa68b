-- The live column says which model filled it (toolkit/column_tag.py): the application reads it
-- with col_description to choose its query model, without rights on schema reembed.
COMMENT ON COLUMN {column} IS {comment}
