"""An abandoned plan frees its name: plan names are unique among plans that are not abandoned.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE reembed.plans DROP CONSTRAINT plans_name_key")
    op.execute("CREATE UNIQUE INDEX plans_name_live ON reembed.plans (name) WHERE phase <> 'abandoned'")


def downgrade() -> None:
    # Only possible while no two plans share a name (an abandoned one and its successor).
    op.execute("DROP INDEX reembed.plans_name_live")
    op.execute("ALTER TABLE reembed.plans ADD CONSTRAINT plans_name_key UNIQUE (name)")
