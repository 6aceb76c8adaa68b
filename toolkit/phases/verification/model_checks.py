"""Checks that ask the target model again: are the stored vectors what the model says for each
row's current text (fidelity), and does a row's own text find the row (self-retrieval)?

Both catch what no hash can: a correct vector stored on the wrong row, or a vector that is
not the model's answer at all. They run on the shared deterministic sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg

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
                   target: Model) -> CheckResult:
    """For each sampled row, a query made from its own text must find it in the new top-k."""
    name = "self_retrieval"
    threshold = options.min_self_retrieval
    if not sample:
        return CheckResult(name, False, None, threshold, "no rows with text and a new vector to sample", {})
    if not target.available:
        return CheckResult(name, False, None, threshold, f"not checked: {target.error}", {})
    queries = [query_from_text(r.text) for r in sample]
    try:
        vectors = target.queries(queries)
    except ReembedError as exc:
        return CheckResult(name, False, None, threshold, f"not checked: {target.fail(exc)}", {})
    found = 0
    misses: list[str] = []
    for row, vector in zip(sample, vectors):
        if vector is None:
            continue
        top = search(conn, subject, subject.new_column, subject.new_type, vector, options.k)
        if row.key in top:
            found += 1
        else:
            misses.append(row.key)
    asked = found + len(misses)
    rate = found / asked if asked else 0.0
    summary = f"{found}/{asked} sampled rows found by a query made from their own text in the new top-{options.k}"
    if misses:
        summary += f" (missed e.g. {', '.join(misses[:3])})"
    return CheckResult(name, rate >= threshold, round(rate, 4), threshold, summary,
                       {"k": options.k, "queries": asked, "found": found, "missed_examples": misses[:10]})
