"""reembed's own schema: plan registry, work ledger, event log, verify results, swaps.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PHASES = (
    "planned", "prepared", "backfilling", "backfilled", "indexed", "verified",
    "cut_over", "rolled_back", "cleaned_up", "abandoned",
)


def upgrade() -> None:
    phases = ", ".join(f"'{p}'" for p in PHASES)
    op.execute(f"""
        CREATE TABLE reembed.plans (
            id                serial PRIMARY KEY,
            name              text NOT NULL UNIQUE,
            table_schema      text NOT NULL,
            table_name        text NOT NULL,
            column_name       text NOT NULL,
            shadow_column     text NOT NULL,
            old_column        text NOT NULL,
            source_model      text NOT NULL,
            target_model      text NOT NULL,
            dimensions        integer NOT NULL,
            spec              jsonb NOT NULL,
            table_fingerprint text NOT NULL,
            phase             text NOT NULL DEFAULT 'planned' CHECK (phase IN ({phases})),
            created_at        timestamptz NOT NULL DEFAULT now(),
            updated_at        timestamptz NOT NULL DEFAULT now()
        )
    """)
    # Two live plans on one column would fight over it: the database refuses the second.
    op.execute(f"""
        CREATE UNIQUE INDEX plans_one_live_plan_per_column ON reembed.plans (table_schema, table_name, column_name)
        WHERE phase NOT IN ('cleaned_up', 'abandoned')
    """)
    op.execute("CREATE SEQUENCE reembed.ledger_seq")
    # One row per row of the user's table: what must be embedded, who holds it, what was embedded.
    op.execute("""
        CREATE TABLE reembed.ledger (
            plan_id      integer NOT NULL REFERENCES reembed.plans (id) ON DELETE CASCADE,
            pk           jsonb NOT NULL,
            seq          bigint NOT NULL DEFAULT nextval('reembed.ledger_seq'),
            state        text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'skipped')),
            text_hash    text,
            skip_reason  text,
            lease_owner  text,
            lease_until  timestamptz,
            embed_count  integer NOT NULL DEFAULT 0,
            changed_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (plan_id, pk)
        )
    """)
    op.execute("CREATE INDEX ledger_pending ON reembed.ledger (plan_id, seq) WHERE state = 'pending'")
    op.execute("""
        CREATE TABLE reembed.events (
            id       bigserial PRIMARY KEY,
            plan_id  integer REFERENCES reembed.plans (id) ON DELETE CASCADE,
            at       timestamptz NOT NULL DEFAULT now(),
            phase    text,
            kind     text NOT NULL,
            message  text NOT NULL,
            details  jsonb
        )
    """)
    op.execute("CREATE INDEX events_plan ON reembed.events (plan_id, id)")
    op.execute("""
        CREATE TABLE reembed.verifications (
            id           bigserial PRIMARY KEY,
            plan_id      integer NOT NULL REFERENCES reembed.plans (id) ON DELETE CASCADE,
            at           timestamptz NOT NULL DEFAULT now(),
            passed       boolean NOT NULL,
            state_token  text NOT NULL,
            result       jsonb NOT NULL
        )
    """)
    op.execute("""
        CREATE TABLE reembed.swaps (
            id         bigserial PRIMARY KEY,
            plan_id    integer NOT NULL REFERENCES reembed.plans (id) ON DELETE CASCADE,
            at         timestamptz NOT NULL DEFAULT now(),
            direction  text NOT NULL CHECK (direction IN ('cutover', 'rollback')),
            lock_ms    double precision NOT NULL,
            attempts   integer NOT NULL,
            captured   jsonb NOT NULL
        )
    """)


def downgrade() -> None:
    for table in ("swaps", "verifications", "events", "ledger", "plans"):
        op.execute(f"DROP TABLE reembed.{table}")
    op.execute("DROP SEQUENCE reembed.ledger_seq")
