-- Tag the shadow column with what fills it: provider, model, task type, dimensions, plan.
COMMENT ON COLUMN {column} IS {comment}
