"""Batch API jobs: each job's rows and the hashes of their texts, recorded before anything is sent.

A job is recorded (its rows leased to it in the ledger), then marked `submitting` right before
the provider is asked to create it, then given the provider's job name right after: a crash
at any point is finished by the next run without creating, or paying for, a job twice (a
`submitting` job is looked up by its unique display name first).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STATES = ("recorded", "submitting", "submitted", "succeeded", "failed", "expired", "cancelled", "collected")


def upgrade() -> None:
    states = ", ".join(f"'{s}'" for s in STATES)
    op.execute(f"""
        CREATE TABLE reembed.batch_jobs (
            id              bigserial PRIMARY KEY,
            plan_id         integer NOT NULL REFERENCES reembed.plans (id) ON DELETE CASCADE,
            display_name    text NOT NULL UNIQUE,
            state           text NOT NULL DEFAULT 'recorded' CHECK (state IN ({states})),
            job_name        text UNIQUE,
            provider_state  text,
            input_file      text,
            rows            integer NOT NULL,
            rows_written    integer NOT NULL DEFAULT 0,
            rows_failed     integer NOT NULL DEFAULT 0,
            rows_changed    integer NOT NULL DEFAULT 0,
            error           text,
            created_at      timestamptz NOT NULL DEFAULT now(),
            submitted_at    timestamptz,
            finished_at     timestamptz,
            updated_at      timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("CREATE INDEX batch_jobs_open ON reembed.batch_jobs (plan_id, id) WHERE state <> 'collected'")
    op.execute("""
        CREATE TABLE reembed.batch_rows (
            job_id     bigint NOT NULL REFERENCES reembed.batch_jobs (id) ON DELETE CASCADE,
            position   integer NOT NULL,
            pk         jsonb NOT NULL,
            text_hash  text NOT NULL,
            PRIMARY KEY (job_id, position)
        )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE reembed.batch_rows")
    op.execute("DROP TABLE reembed.batch_jobs")
