"""`reembed verify`: passes a clean migration, and names the check that fails for each way a
migration can be wrong."""

from __future__ import annotations

import numpy as np
import pytest
from psycopg import sql

from toolkit.phases.verification.options import VerifyOptions
from toolkit.phases.verify import run_verify, verification_gate
from verify_support import ROWS, migrated, random_vectors, verify_emulators, verify_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("verify_env")


def verify(m, **options):  # type: ignore[no-untyped-def]
    from toolkit.db import Database

    m.reload()
    return run_verify(Database(), m.conn, m.plan, m.record, VerifyOptions(progress=False, **options))


def test_clean_migration_passes(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    m = migrated(conn, run_cli, empty=[3, 7])
    result = verify(m)
    by_name = {c.name: c for c in result.checks}
    assert result.passed, [(c.name, c.summary) for c in result.checks if not c.passed]
    assert result.phase == "verified"
    assert by_name["coverage"].evidence["skipped"][0]["reason"] == "empty text"
    assert verification_gate(conn, m.plan, m.reload().record)[0]


def failed(result) -> set[str]:  # type: ignore[no-untyped-def]
    return {c.name for c in result.checks if not c.passed}


def check(result, name):  # type: ignore[no-untyped-def]
    return next(c for c in result.checks if c.name == name)


def test_one_percent_random_vectors_fail_outliers_over_all_rows(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    m = migrated(conn, run_cli)
    ids = [int(i) for i in np.random.default_rng(7).choice(ROWS, size=ROWS // 100, replace=False)]
    for i, vector in zip(ids, random_vectors(len(ids), seed=11)):
        conn.execute(sql.SQL("UPDATE docs SET {} = %s WHERE id = %s").format(sql.Identifier(m.plan.shadow_column)),
                     (vector, i))
    result = verify(m)
    assert not result.passed
    outliers = check(result, "outliers")
    assert not outliers.passed and outliers.value == len(ids)  # every corrupted row, none of the others
    assert set(outliers.evidence["examples"]) <= {str(i) for i in ids}
    # Hashes, norms and dimensions are all fine: only a check that looks at the vectors themselves sees it.
    assert {"freshness", "sanity", "coverage"}.isdisjoint(failed(result))
    assert result.phase == "indexed"
    ok, reason = verification_gate(conn, m.plan, m.reload().record)
    assert not ok and "outliers" in reason


def test_rows_changed_behind_change_tracking_fail_freshness(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    m = migrated(conn, run_cli)
    conn.execute("ALTER TABLE docs DISABLE TRIGGER USER")
    conn.execute("UPDATE docs SET content = content || ' (edited)' WHERE id % 50 = 0")
    result = verify(m)
    freshness = check(result, "freshness")
    assert not freshness.passed and freshness.evidence["rows_stale"] == ROWS // 50
    assert freshness.evidence["stale_examples"][0]["key"] in {str(i) for i in range(0, ROWS, 50)}
    assert "change tracking missed" in freshness.summary
    assert not result.passed


def test_index_with_another_opclass_fails_index_check(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    m = migrated(conn, run_cli, opclass="vector_l2_ops")
    result = verify(m)
    index = check(result, "index")
    assert not index.passed
    assert "vector_l2_ops serves <->" in index.summary and "orders by <=>" in index.summary
    assert not check(result, "ann_recall").passed
    assert failed(result) <= {"index", "ann_recall"}  # the vectors themselves are right


def test_vectors_on_the_wrong_rows_fail_fidelity_and_self_retrieval(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    m = migrated(conn, run_cli)
    # Each row gets the (correct) vector of the next row: nothing a hash or a norm can see.
    conn.execute(sql.SQL("UPDATE docs AS d SET {c} = n.v FROM (SELECT id, coalesce(lead({c}) OVER w, "
                         "first_value({c}) OVER w) AS v FROM docs WINDOW w AS (ORDER BY id)) n WHERE d.id = n.id"
                         ).format(c=sql.Identifier(m.plan.shadow_column)))
    result = verify(m)
    assert {"fidelity", "self_retrieval", "agreement"} <= failed(result)
    assert {"coverage", "freshness", "sanity", "outliers", "index", "ann_recall"}.isdisjoint(failed(result))
    assert check(result, "fidelity").value < 0.05
    assert check(result, "self_retrieval").value < 0.2
