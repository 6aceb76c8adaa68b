"""`reembed verify`: passes a clean migration, and names the check that fails for each way a
migration can be wrong."""

from __future__ import annotations

import numpy as np
import pytest
from psycopg import sql

from toolkit.phases.verification.options import VerifyOptions
from toolkit.phases.verify import run_verify, verification_gate
from toolkit.phases.verification.models import query_from_text
from verify_support import (ROWS, SHARED_START_GROUP, migrated, random_vectors, shared_start_text,  # noqa: F401
                            short_text, verify_emulators, verify_env)

pytestmark = pytest.mark.usefixtures("verify_env")

# Each row gets the (correct) vector of the next row: nothing a hash or a norm can see.
SHUFFLE_TO_NEXT_ROW = ("UPDATE docs AS d SET {c} = n.v FROM (SELECT id, coalesce(lead({c}) OVER w, "
                       "first_value({c}) OVER w) AS v FROM docs WINDOW w AS (ORDER BY id)) n WHERE d.id = n.id")


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
    conn.execute(sql.SQL(SHUFFLE_TO_NEXT_ROW).format(c=sql.Identifier(m.plan.shadow_column)))
    result = verify(m)
    assert {"fidelity", "self_retrieval", "agreement"} <= failed(result)
    assert {"coverage", "freshness", "sanity", "outliers", "index", "ann_recall"}.isdisjoint(failed(result))
    assert check(result, "fidelity").value < 0.05
    assert check(result, "self_retrieval").value < 0.2


# -- gates that judge the migration, not the corpus ---------------------------------------------------

SHORT_ROWS = 600


def short_corpus(conn, run_cli):  # type: ignore[no-untyped-def]
    """Two or three loosely related words a row, and a small HNSW graph (m=4) on both columns: a
    corpus hard for any approximate index, whose vectors lean little toward their centroid."""
    return migrated(conn, run_cli, SHORT_ROWS, text=short_text, title=False, m=4)


def test_short_loosely_related_texts_are_judged_against_the_original_column(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    m = short_corpus(conn, run_cli)
    result = verify(m)
    assert result.passed, [(c.name, c.summary) for c in result.checks if not c.passed]
    recall, outliers = check(result, "ann_recall"), check(result, "outliers")
    # The absolute gates alone would fail this clean migration: recall under 0.95 at the default
    # hnsw.ef_search, and a median cosine to the centroid within twice the random band.
    assert recall.value < 0.95 and recall.evidence["setting_value"] == "40"
    assert outliers.evidence["median_cosine_to_centroid"] < 2 * outliers.evidence["band"]
    # The original column measured the same way is the baseline, named with both figures.
    baseline = recall.evidence["baseline"]
    assert baseline["used"] == "original column embedding, index docs_embedding_idx"
    assert "ollama:nomic-embed-text query vectors" in baseline["queries_from"]
    assert recall.value >= baseline["original_recall"] - 0.02
    assert f"original index {baseline['original_recall']:.3f} on the same queries" in recall.summary
    assert f"original {baseline['original_recall']:.3f}" in recall.threshold
    assert outliers.value == 0 and outliers.evidence["beyond_baseline"] == 0
    assert outliers.evidence["baseline"].startswith("original column embedding")
    assert outliers.evidence["original"]["median_cosine_to_centroid"] > 2 * outliers.evidence["band"]
    # Without the source model both columns are measured with the rows' stored vectors.
    stored = check(verify(m, no_source=True), "ann_recall")
    assert "stored vectors" in stored.evidence["baseline"]["queries_from"]
    assert stored.evidence["baseline"]["new_recall_compared"] != stored.value
    # Without an index on the original column there is no recall baseline: the absolute gate judges, and says so.
    conn.execute("DROP INDEX docs_embedding_idx")
    alone = check(verify(m), "ann_recall")
    assert not alone.passed and "no baseline (the original column embedding has no valid index" in alone.summary
    assert alone.threshold == 0.95


@pytest.mark.parametrize("damage", ["random", "zero and duplicated", "shuffled"])
def test_damage_still_fails_where_the_baseline_judges(conn, run_cli, damage: str) -> None:  # type: ignore[no-untyped-def]
    m = short_corpus(conn, run_cli)
    shadow = sql.Identifier(m.plan.shadow_column)
    ids = [int(i) for i in np.random.default_rng(5).choice(SHORT_ROWS, size=SHORT_ROWS // 100, replace=False)]
    if damage == "random":
        for i, vector in zip(ids, random_vectors(len(ids), seed=13)):
            conn.execute(sql.SQL("UPDATE docs SET {} = %s WHERE id = %s").format(shadow), (vector, i))
    elif damage == "zero and duplicated":
        conn.execute(sql.SQL("UPDATE docs SET {} = %s WHERE id = ANY (%s)").format(shadow), (np.zeros(768), ids[:3]))
        conn.execute(sql.SQL("UPDATE docs SET {c} = (SELECT {c} FROM docs WHERE id = %s) WHERE id = ANY (%s)").format(
            c=shadow), (ids[3], ids[4:]))
    else:
        conn.execute(sql.SQL(SHUFFLE_TO_NEXT_ROW).format(c=shadow))
    result = verify(m)
    expected = {"random": "outliers", "zero and duplicated": "sanity", "shuffled": "fidelity"}[damage]
    assert not result.passed and expected in failed(result), [(c.name, c.summary) for c in result.checks]
    if damage == "zero and duplicated":
        sanity = check(result, "sanity")
        assert sanity.evidence["off_norm"] == 3 and sanity.evidence["duplicate_rows"] >= len(ids) - 3
    if damage == "random":
        outliers = check(result, "outliers")
        assert outliers.evidence["baseline"].startswith("original column")  # judged against the baseline, and still caught
        assert set(outliers.evidence["outlier_examples"]) <= {str(i) for i in ids} and outliers.value >= len(ids) - 1



def test_self_retrieval_on_a_corpus_hard_for_both_models_is_judged_against_the_original(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    m = migrated(conn, run_cli, SHORT_ROWS, text=shared_start_text, title=False)
    assert query_from_text(shared_start_text(0)) == query_from_text(shared_start_text(SHARED_START_GROUP - 1))
    # The two models' rates differ by which ten of a group each ranks first: sampling noise of
    # about 0.06 at 100 rows, so the margin here is wider than the default's 0.05.
    result = verify(m, margin=0.25)
    own = check(result, "self_retrieval")
    baseline = own.evidence["baseline"]
    assert own.value < 0.5 and baseline["original_rate"] < 0.5, own.summary  # about 10 of 40 for both
    assert baseline["used"] == "original column embedding"
    assert "ollama:nomic-embed-text query vectors" in baseline["queries_from"]
    assert own.passed and check(result, "fidelity").passed, own.summary
    assert own.threshold == f">= 0.9 or >= original {baseline['original_rate']:.3f} - 0.25"
    assert "a corpus hard for both models" in own.summary
    # With no margin the new vectors must do at least as well as the original on the same rows.
    tight = check(verify(m, margin=0.0), "self_retrieval")
    assert tight.passed == (baseline["new_rate_compared"] >= baseline["original_rate"])
    # Without the source model there is no baseline: the absolute gate judges, and says so.
    alone = check(verify(m, margin=0.25, no_source=True), "self_retrieval")
    assert not alone.passed and "no baseline (no query vectors from the source model" in alone.summary


def test_self_retrieval_baseline_never_excuses_vectors_on_the_wrong_rows(conn, run_cli) -> None:  # type: ignore[no-untyped-def]
    m = migrated(conn, run_cli, SHORT_ROWS, text=shared_start_text, title=False)
    # Each row gets its neighbour's vector, mostly from its own group: its group's query finds
    # it about as often as before, so only fidelity tells these vectors are not the rows' own.
    conn.execute(sql.SQL(SHUFFLE_TO_NEXT_ROW).format(c=sql.Identifier(m.plan.shadow_column)))
    result = verify(m, margin=0.25)
    own = check(result, "self_retrieval")
    assert not check(result, "fidelity").passed
    assert not own.passed and own.threshold == 0.9
    assert "is not used: fidelity did not pass" in own.summary
    assert "original_rate" in own.evidence["baseline"]
