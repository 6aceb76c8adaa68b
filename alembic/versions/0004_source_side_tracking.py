"""Source-side change tracking: which rows' source-model vectors are no longer of their text.

After a plan's first cutover the application writes the target model's vectors (or none) into
the column it reads, and the source model's vectors, kept for a rollback, fall behind the text.
`ledger.source_stale` remembers it per row; `plans.cut_over_at` says since when it must be
remembered; `reembed.mark_changed()` is the one ledger upsert every strategy's change tracking
calls, so both models' bookkeeping follows a change in the same statement.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE reembed.plans ADD COLUMN cut_over_at timestamptz")
    op.execute("ALTER TABLE reembed.ledger ADD COLUMN source_stale boolean NOT NULL DEFAULT false")
    # rollback, abandon and status count these under a lock: index-backed, never a scan.
    op.execute("CREATE INDEX ledger_source_stale ON reembed.ledger (plan_id, seq) WHERE source_stale")
    # A row inserted, or whose text, title or key changed: pending for the target model, its
    # lease revoked (a batch embedded from the old text must not be written), and, once the plan
    # has been cut over, stale for the source model too. Called by SECURITY DEFINER tracking
    # functions; the search_path is pinned like theirs.
    op.execute("""
        CREATE FUNCTION reembed.mark_changed(plan integer, key jsonb) RETURNS void
        LANGUAGE sql SET search_path = pg_catalog, pg_temp
        AS $reembed$
            INSERT INTO reembed.ledger AS l (plan_id, pk, state, source_stale)
            SELECT p.id, key, 'pending', p.cut_over_at IS NOT NULL FROM reembed.plans AS p WHERE p.id = plan
            ON CONFLICT (plan_id, pk) DO UPDATE
                SET state = 'pending', text_hash = NULL, skip_reason = NULL, changed_at = now(),
                    lease_owner = NULL, lease_until = NULL,
                    source_stale = l.source_stale OR EXCLUDED.source_stale
        $reembed$
    """)
    # The backfill's first statement in every write transaction (toolkit/phases/write_guard.py):
    # lock the plan's registry row FOR SHARE until the transaction ends (swaps, cleanup and abandon
    # lock it FOR NO KEY UPDATE first) and refuse, with a SQLSTATE of our own, when the plan is no
    # longer in the phase the write statement was built for. The write goes down one pipeline
    # behind it, so a refusal here is what keeps it from running by names that moved.
    op.execute("""
        CREATE FUNCTION reembed.guard_write(plan integer, built_for text) RETURNS void
        LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
        AS $reembed$
        DECLARE
            now_in text;
        BEGIN
            SELECT p.phase INTO now_in FROM reembed.plans AS p WHERE p.id = plan FOR SHARE;
            IF now_in IS DISTINCT FROM built_for THEN
                RAISE EXCEPTION 'plan % is % now, the write was built for %', plan,
                    coalesce(now_in, 'no longer registered'), built_for
                    USING ERRCODE = 'RM001';
            END IF;
        END
        $reembed$
    """)


def downgrade() -> None:
    op.execute("DROP FUNCTION reembed.guard_write(integer, text)")
    op.execute("DROP FUNCTION reembed.mark_changed(integer, jsonb)")
    op.execute("DROP INDEX reembed.ledger_source_stale")
    op.execute("ALTER TABLE reembed.ledger DROP COLUMN source_stale")
    op.execute("ALTER TABLE reembed.plans DROP COLUMN cut_over_at")
