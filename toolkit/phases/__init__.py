"""One module per phase of the lifecycle, each shaped the same way (after pgroll's operations):
a check that refuses before touching anything, the action, and its inverse where one exists.

    planning -> prepare -> backfill -> index -> verify -> cutover -> cleanup
                                                            \\-> rollback
"""

# Phases whose `planned_sql(plan)` shows the DDL they will run (`reembed plan --sql`).
SQL_PHASES = ("prepare", "index", "cutover", "rollback", "cleanup")
