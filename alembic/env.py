"""Alembic environment: the version table lives in schema `reembed`, never in public."""

from alembic import context
from sqlalchemy import text

from toolkit.migrations import SCHEMA, VERSION_TABLE, connectable_from_config

with connectable_from_config(context.config).connect() as connection:
    # One migrator at a time, even when several `reembed` processes start together.
    connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('reembed.migrations'))"))
    # CREATE SCHEMA IF NOT EXISTS still needs CREATE on the database: a role that was handed a
    # pre-created schema must not need it.
    if connection.execute(text("SELECT to_regnamespace(:s) IS NULL"), {"s": SCHEMA}).scalar():
        connection.execute(text(f"CREATE SCHEMA {SCHEMA}"))
    context.configure(connection=connection, version_table=VERSION_TABLE, version_table_schema=SCHEMA)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
