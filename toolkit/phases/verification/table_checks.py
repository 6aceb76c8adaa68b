"""Checks over ALL rows, in SQL: coverage, freshness, sanity, outliers.

Each is one or two read-only scans of the table (and the ledger); none calls a provider, so a
corruption of even one row is seen deterministically, not by luck of a sample.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import psycopg
from psycopg import sql

from toolkit.phases.ledger import live_tail_tolerance
from toolkit.phases.prepare import key_json
from toolkit.phases.verification.options import CheckResult, VerifyOptions
from toolkit.phases.verification.subject import Subject, template

EXAMPLES = 10
PendingAllowance = Callable[[int], int]  # rows in the table -> tracked rows that may still be pending


def _read(conn: psycopg.Connection, query: sql.Composable) -> list[tuple[Any, ...]]:
    # Each check reads in its own short read-only transaction: nothing is written, and no snapshot
    # is held across checks (a long snapshot would stop a running backfill's pages being pruned).
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        return conn.execute(query).fetchall()


def _parts(subject: Subject) -> dict[str, sql.Composable]:
    plan = subject.plan
    return {"table": subject.table, "new": sql.Identifier("t", subject.new_column), "key": subject.key("t"),
            "has_text": subject.has_text("t"), "ledger_key": key_json(plan, "t"),
            "hash": plan.text_hash_expression("t"), "plan_id": sql.Literal(subject.record.id),
            "limit": sql.Literal(EXAMPLES)}


def coverage(conn: psycopg.Connection, subject: Subject, options: VerifyOptions,
             pending_allowed: PendingAllowance = live_tail_tolerance) -> CheckResult:
    parts = _parts(subject)
    total, with_text, covered, queued = _read(conn, template("verify_coverage", **parts))[0]
    missing = with_text - covered
    # New rows the application inserted since the last run wait, tracked, in the ledger; like
    # freshness, a live application's tail of those is tolerated; a row nothing will ever embed is not.
    allowed = pending_allowed(total)
    forgotten = missing - queued
    uncovered = [{"key": k, "ledger_state": s or "untracked", "skip_reason": r}
                 for k, s, r in _read(conn, template("verify_uncovered", **parts))] if missing else []
    skipped = [{"reason": reason, "rows": rows, "examples": examples} for reason, rows, examples in _read(
        conn, template("verify_skipped", plan_id=parts["plan_id"], examples=sql.Literal(5)))]
    fraction = covered / with_text if with_text else 1.0
    skipped_rows = sum(s["rows"] for s in skipped)
    summary = f"{covered}/{with_text} rows with text have a new vector"
    if forgotten:
        summary += f"; {forgotten} missing (e.g. {', '.join(u['key'] for u in uncovered[:3])})"
    if queued:
        summary += f"; {queued} new rows queued for embedding" + (f", more than {allowed}" if queued > allowed else "")
    if skipped_rows:
        summary += f"; {skipped_rows} skipped: " + ", ".join(f"{s['rows']} {s['reason']}" for s in skipped[:3])
    return CheckResult("coverage", forgotten == 0 and queued <= allowed, round(fraction, 6),
                       1.0, summary,
                       {"rows_total": total, "rows_with_text": with_text, "rows_covered": covered,
                        "rows_missing": missing, "rows_queued": queued, "max_pending": allowed,
                        "rows_without_text": total - with_text, "missing_examples": uncovered,
                        "skipped": skipped})


def freshness(conn: psycopg.Connection, subject: Subject, options: VerifyOptions,
              pending_allowed: PendingAllowance = live_tail_tolerance) -> CheckResult:
    parts = _parts(subject)
    done, pending, stale, untracked = _read(conn, template("verify_freshness", **parts))[0]
    examples = [{"key": k, "embedded_before": at.isoformat()} for k, at in _read(conn, template("verify_stale", **parts))
                ] if stale else []
    # Pending rows are tracked changes queued for re-embedding (a live application makes a few all
    # the time); stale and untracked rows are vectors nothing will ever fix. Only the first may be
    # tolerated: as many as the application's write rate explains (see verify._pending_allowance).
    allowed = pending_allowed(done + pending)
    problems = []
    if stale:
        problems.append(f"{stale} rows embedded from text they no longer have (e.g. "
                        f"{', '.join(e['key'] for e in examples[:3])}): change tracking missed their update")
    if pending > allowed:
        problems.append(f"{pending} rows pending, more than {allowed} (run `reembed run {subject.plan.name}`)")
    if untracked:
        problems.append(f"{untracked} vectors with no ledger entry")
    if problems:
        summary = "; ".join(problems)
    else:
        summary = f"all {done} embedded rows match their current text and title" + (
            f"; {pending} changed rows queued for re-embedding" if pending else "")
    return CheckResult("freshness", not problems, stale + pending + untracked,
                       f"0 stale, <= {allowed} pending", summary,
                       {"rows_done": done, "rows_stale": stale, "rows_pending": pending, "rows_untracked": untracked,
                        "max_pending": allowed, "stale_examples": examples})


def sanity(conn: psycopg.Connection, subject: Subject, options: VerifyOptions) -> CheckResult:
    parts = {**_parts(subject), "dims": sql.Literal(subject.plan.dimensions),
             "tolerance": sql.Literal(options.norm_tolerance)}
    vectors, wrong_dims, non_finite, off_norm, min_norm, max_norm = _read(conn, template("verify_sanity", **parts))[0]
    bad = [{"key": k, "dims": d, "norm": n} for k, d, n in _read(conn, template("verify_bad_norms", **parts))
           ] if wrong_dims or off_norm or non_finite else []
    groups = _read(conn, template("verify_duplicates", **parts))
    duplicate_rows = int(groups[0][3]) if groups else 0
    duplicates = [{"rows": rows, "keys": keys} for rows, keys, _, _ in groups]
    problems = []
    if wrong_dims:
        problems.append(f"{wrong_dims} vectors not {subject.plan.dimensions}-dimensional")
    if non_finite:
        problems.append(f"{non_finite} vectors with non-finite values")
    if off_norm:
        problems.append(f"{off_norm} vectors with norm off 1 by more than {options.norm_tolerance:g} "
                        f"(norms {min_norm:.4f}..{max_norm:.4f})")
    if duplicate_rows > options.max_duplicates:
        problems.append(f"{duplicate_rows} rows share a vector with a different text "
                        f"(e.g. {', '.join(duplicates[0]['keys'])})")
    summary = "; ".join(problems) if problems else (
        f"{vectors} vectors: {subject.plan.dimensions} dims, finite, norm 1 ± {options.norm_tolerance:g}, "
        "no vector shared by different texts")
    return CheckResult("sanity", not problems, len(problems), 0, summary,
                       {"vectors": vectors, "wrong_dims": wrong_dims, "non_finite": non_finite, "off_norm": off_norm,
                        "min_norm": min_norm, "max_norm": max_norm, "norm_tolerance": options.norm_tolerance,
                        "bad_examples": bad, "duplicate_rows": duplicate_rows,
                        "max_duplicates": options.max_duplicates, "duplicate_groups": duplicates})


# A new vector lies beyond the original column's tail when it is further below its median (in
# MADs) than the original's lowest 1% lie below theirs, less one: and never closer than this.
OUTLIER_Z_FLOOR = -4.0


def outliers(conn: psycopg.Connection, subject: Subject, options: VerifyOptions) -> CheckResult:
    """Vectors that look like noise next to the rest of the corpus.

    A random unit vector's cosine to any fixed direction is ~N(0, 1/dims); an embedding model's
    vectors all lean toward their common direction (real models: cosine 0.3-0.8 to the centroid).
    A row below `outlier_sigmas`/sqrt(dims) is indistinguishable from a random vector. The whole
    corpus sitting near zero means the column as a whole looks like noise.

    Short, loosely related texts lean less, and a clean migration's lowest rows can dip below that
    band: the corpus, not the migration. The original column, measured the same way, is the
    baseline: a new vector counts as an outlier when it is below the band and also further below
    its column's median than the original's own low tail reaches (each in units of its column's
    spread). Where the original column is gone or itself looks like noise, the band alone judges.
    """
    if options.outlier_sigmas == 0:
        return CheckResult("outliers", True, None, "disabled", "disabled (--outlier-sigmas 0)", {})
    band = options.outlier_sigmas / math.sqrt(subject.plan.dimensions)
    old_band = options.outlier_sigmas / math.sqrt(subject.old_dimensions or subject.plan.dimensions)
    old = sql.Identifier("o", subject.old_column) if subject.old_column else sql.SQL("NULL")
    parts = {**_parts(subject), "band": sql.Literal(band), "old": old, "old_table": subject.old_table,
             "z_floor_min": sql.Literal(OUTLIER_Z_FLOOR)}
    below, beyond, below_examples, beyond_examples, z_floor, dist = _read(conn, template("verify_outliers", **parts))[0]
    dist = dist or {}
    median, lowest = dist.get("new_median"), dist.get("new_min")
    old_median = dist.get("old_median")
    evidence: dict[str, Any] = {
        "band": round(band, 4), "median_cosine_to_centroid": median, "min_cosine_to_centroid": lowest,
        "spread": dist.get("new_spread"), "below_band": below, "examples": below_examples or [],
        "original": {"column": subject.old_column, "band": round(old_band, 4), "median_cosine_to_centroid": old_median,
                     "min_cosine_to_centroid": dist.get("old_min"), "p01_cosine_to_centroid": dist.get("old_p01"),
                     "spread": dist.get("old_spread")}}
    if median is None:
        return CheckResult("outliers", True, 0, options.max_outliers, "no vectors to judge", evidence)
    if old_median is None:
        baseline = "none: the original column is gone; the band alone judges"
    elif old_median < 2 * old_band:
        baseline = (f"none: the original column itself looks like noise (median cosine {old_median:.3f}); "
                    "the band alone judges")
    else:
        baseline = (f"original column {subject.old_column} (median cosine {old_median:.3f}; its lowest 1% lie "
                    f"{-(z_floor + 1):.1f} spreads below it: the floor is {z_floor:.1f})")
    with_baseline = baseline.startswith("original")
    # A random column's median sits within one band of zero. Without a baseline, twice that is
    # required; with one, a column that leans less than the original (loosely related texts) is
    # judged row by row against the original's tail instead.
    lean = 1 if with_baseline else 2
    if median < lean * band:
        return CheckResult(
            "outliers", False, below, options.max_outliers,
            f"the new vectors as a whole look like noise: median cosine to their centroid {median:.3f} is within "
            f"{lean}x the random band {band:.3f} (an isotropic model? pass --outlier-sigmas 0 to skip); "
            f"baseline: {baseline}", evidence)
    count = beyond if with_baseline else below
    examples = (beyond_examples if with_baseline else below_examples) or []
    evidence.update({"baseline": baseline, "z_floor": z_floor if with_baseline else None,
                     "beyond_baseline": beyond if with_baseline else None, "outlier_examples": examples})
    if count:
        summary = (f"{count} vectors look random (cosine to the corpus centroid below {band:.3f}; median {median:.3f}"
                   + (", and beyond the original column's own tail" if with_baseline else "")
                   + f"), e.g. {', '.join(examples[:3])}")
    else:
        summary = (f"every vector leans toward the corpus centroid (min cosine {lowest:.3f}, median {median:.3f}, "
                   f"random band {band:.3f})")
        if below:
            summary = (f"{below} vectors below the random band {band:.3f} (min {lowest:.3f}, median {median:.3f}), "
                       "none beyond the original column's own tail: the corpus, not the migration")
    summary += f"; baseline: {baseline}"
    return CheckResult("outliers", count <= options.max_outliers, count, options.max_outliers, summary, evidence)
