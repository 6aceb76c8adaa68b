"""The checks behind `reembed verify`, one concern per module:

    subject       what is verified: columns and indexes by phase, the retrieval operator, the sample
    table_checks  over all rows, in SQL: coverage, freshness, sanity, outliers
    index_checks  the new index: existence, validity, operator class, use; ANN recall vs exact
    model_checks  the target asked again: fidelity (re-embedding), self-retrieval
    agreement     old model versus new model on the same queries
    report        the human-readable verdict
"""
