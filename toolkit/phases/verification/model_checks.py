"""Checks that ask the target model again: are the stored vectors what the model says for each
row's current text (fidelity), and does a row's own text find the row (self-retrieval)?

Both catch what no hash can: a correct vector stored on the wrong row, or a vector that is
not the model's answer at all. They run on the shared deterministic sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from toolkit.errors import ReembedError
from toolkit.phases.verification.models import Model, query_from_text
from toolkit.phases.verification.options import CheckResult, VerifyOptions
from toolkit.phases.verification.subject import SampleRow, Subject, search


def sample_query_vectors(model: Model, sample: list[SampleRow]) -> list[np.ndarray | None] | None:
    """A model's query vectors of the sampled rows' text (cached for the checks after), or None
    when it cannot answer (the checks that need it then report why)."""
    if not sample or not model.available:
        return None
    try:
        return model.queries([query_from_text(r.text) for r in sample])
    except ReembedError as exc:
        model.fail(exc)
        return None


def fidelity(subject: Subject, options: VerifyOptions, sample: list[SampleRow], target: Model) -> CheckResult:
    """Re-embed the sampled rows' current text and title with the target; compare to what is stored."""
    name = "fidelity"
    threshold = options.min_fidelity
    if not sample:
        return CheckResult(name, False, None, threshold, "no rows with text and a new vector to sample", {})
    if not target.available:
        return CheckResult(name, False, None, threshold, f"not checked: {target.error}", {})
    try:
        fresh = target.documents([r.text for r in sample], [r.title for r in sample])
    except ReembedError as exc:
        return CheckResult(name, False, None, threshold, f"not checked: {target.fail(exc)}", {})
    cosines: list[tuple[str, float]] = []
    for row, vector in zip(sample, fresh):
        if vector is None:
            continue
        stored = row.vector / (np.linalg.norm(row.vector) or 1.0)
        cosines.append((row.key, float(np.dot(stored, vector))))
    values = np.asarray([c for _, c in cosines]) if cosines else np.asarray([0.0])
    mismatched = sorted((c, k) for k, c in cosines if not c >= options.fidelity_cosine)
    matched = (len(cosines) - len(mismatched)) / len(cosines) if cosines else 0.0
    evidence: dict[str, Any] = {"sampled": len(sample), "compared": len(cosines),
                                "row_threshold_cosine": options.fidelity_cosine, "min_cosine": float(values.min()),
                                "median_cosine": float(np.median(values)),
                                "mismatches": [{"key": k, "cosine": round(c, 4)} for c, k in mismatched[:10]]}
    if mismatched:
        summary = (f"{len(mismatched)} of {len(cosines)} sampled rows' stored vectors differ from {subject.plan.target}'s "
                   f"vector of their current text (cosine < {options.fidelity_cosine:g}; lowest {values.min():.3f} "
                   f"at {mismatched[0][1]})")
    else:
        summary = (f"all {len(cosines)} sampled rows re-embed to their stored vector "
                   f"(min cosine {values.min():.4f})")
    return CheckResult(name, matched >= threshold, round(matched, 4), threshold, summary, evidence)


def self_retrieval(conn: psycopg.Connection, subject: Subject, options: VerifyOptions, sample: list[SampleRow],
                   target: Model, query_vectors: list[np.ndarray | None] | None = None,
                   source_query_vectors: list[np.ndarray | None] | None = None,
                   fidelity_passed: bool = False) -> CheckResult:
    """For each sampled row, a query made from its own text must find it in the new top-k.

    Some corpora defeat this for any model: near-duplicate passages, or texts that share their
    beginning, where other rows match a row's own query better than it does. Below
    --min-self-retrieval the original column is measured the same way (the source model's query
    vectors of the same texts against the original vectors, as the application asks today), and
    the check passes when the new vectors do no worse than it minus --margin. That baseline
    excuses a hard corpus, never wrong vectors: it is used only when fidelity found every sampled
    row's vector to be the target's answer for that row's own text.
    """
    name = "self_retrieval"
    threshold: Any = options.min_self_retrieval
    if not sample:
        return CheckResult(name, False, None, threshold, "no rows with text and a new vector to sample", {})
    if not target.available:
        return CheckResult(name, False, None, threshold, f"not checked: {target.error}", {})
    if query_vectors is None:
        try:
            query_vectors = target.queries([query_from_text(r.text) for r in sample])
        except ReembedError as exc:
            return CheckResult(name, False, None, threshold, f"not checked: {target.fail(exc)}", {})
    found = _found(conn, subject, sample, query_vectors, subject.new_column, subject.new_type, subject.table,
                   options.k)
    asked = len(found)
    hits = sum(found.values())
    misses = [key for key, hit in found.items() if not hit]
    rate = hits / asked if asked else 0.0
    summary = f"{hits}/{asked} sampled rows found by a query made from their own text in the new top-{options.k}"
    if misses:
        summary += f" (missed e.g. {', '.join(misses[:3])})"
    evidence: dict[str, Any] = {"k": options.k, "queries": asked, "found": hits, "missed_examples": misses[:10]}
    passed = rate >= options.min_self_retrieval
    if passed:
        evidence["baseline"] = {"used": "none", "why": f"not needed: at or above {options.min_self_retrieval:g}"}
        return CheckResult(name, passed, round(rate, 4), threshold, summary, evidence)
    baseline = _original_self_retrieval(conn, subject, options, sample, source_query_vectors, found)
    evidence["baseline"] = baseline
    if "original_rate" not in baseline:
        summary += f"; no baseline ({baseline['why']}): judged against {options.min_self_retrieval:g} alone"
    elif not fidelity_passed:
        summary += (f"; the original column's own rate ({baseline['original_rate']:.3f}) is not used: fidelity "
                    "did not pass, so a low rate may be vectors stored on the wrong rows")
    else:
        original, compared = baseline["original_rate"], baseline["new_rate_compared"]
        threshold = f">= {options.min_self_retrieval:g} or >= original {original:.3f} - {options.margin:g}"
        summary += f"; the original column finds {original:.3f} of the same rows with {subject.plan.source}'s queries"
        passed = compared >= round(original - options.margin, 4)
        summary += (": a corpus hard for both models, the new no worse" if passed
                    else f": the new vectors trail the original by more than {options.margin:g}")
    return CheckResult(name, passed, round(rate, 4), threshold, summary, evidence)


def _found(conn: psycopg.Connection, subject: Subject, sample: list[SampleRow], vectors: list[np.ndarray | None],
           column: str, column_type: str, table: sql.Identifier, k: int) -> dict[str, bool]:
    """Whether each sampled row with a query vector is in the top-k of `column` for it."""
    return {row.key: row.key in search(conn, subject, column, column_type, vector, k, table=table)
            for row, vector in zip(sample, vectors) if vector is not None}


def _original_self_retrieval(conn: psycopg.Connection, subject: Subject, options: VerifyOptions,
                             sample: list[SampleRow], source_query_vectors: list[np.ndarray | None] | None,
                             new_found: dict[str, bool]) -> dict[str, Any]:
    """The same measure on the original column, for the sampled rows that still have an original
    vector, with the new column's rate on those same rows beside it; or why there is none."""
    if subject.old_column is None:
        return {"used": "none", "why": "the original column is gone"}
    if not source_query_vectors or all(v is None for v in source_query_vectors):
        return {"used": "none", "why": f"no query vectors from the source model {subject.plan.source}"}
    pairs = [(row, vector) for row, vector in zip(sample, source_query_vectors)
             if vector is not None and row.old_vector is not None and row.key in new_found]
    if not pairs:
        return {"used": "none", "why": "no sampled row has a vector in the original column"}
    old_found = _found(conn, subject, [r for r, _ in pairs], [v for _, v in pairs], subject.old_column,
                       subject.old_type, subject.old_table, options.k)
    original = sum(old_found.values()) / len(old_found)
    compared = sum(new_found[key] for key in old_found) / len(old_found)
    return {"used": f"original column {subject.old_column}", "queries": len(old_found),
            "queries_from": f"{subject.plan.source} query vectors of the same sampled rows' text",
            "original_rate": round(original, 4), "new_rate_compared": round(compared, 4)}
