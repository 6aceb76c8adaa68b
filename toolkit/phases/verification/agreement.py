"""Old model versus new model on the same queries: how much their top-k agree (overlap@k) and,
where relevance is known, recall@k and MRR of each side by side.

Queries come from --queries (JSONL) or, when none, from the sampled rows' own text, whose one
relevant row is the row itself. The old side is searched the way the application searches
today: the source model's query embedding (with its query prefix) on the old column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from tqdm import tqdm

from toolkit.errors import ReembedError
from toolkit.phases.verification.models import Model, query_from_text
from toolkit.phases.verification.options import CheckResult, LabelledQuery, VerifyOptions
from toolkit.phases.verification.subject import SampleRow, Subject, search


@dataclass
class QueryOutcome:
    query: str
    relevant: tuple[str, ...]
    new_top: list[str]
    old_top: list[str] | None

    def overlap(self, k: int) -> float | None:
        return None if self.old_top is None else len(set(self.new_top) & set(self.old_top)) / k

    @staticmethod
    def _recall(top: list[str], relevant: tuple[str, ...]) -> float:
        return len(set(top) & set(relevant)) / len(set(relevant))

    @staticmethod
    def _rr(top: list[str], relevant: tuple[str, ...]) -> float:
        return next((1.0 / rank for rank, key in enumerate(top, 1) if key in relevant), 0.0)

    def to_json(self, k: int) -> dict[str, Any]:
        out: dict[str, Any] = {"query": self.query[:80], "overlap": self.overlap(k)}
        if self.relevant:
            out["new_recall"] = self._recall(self.new_top, self.relevant)
            out["new_rr"] = self._rr(self.new_top, self.relevant)
            if self.old_top is not None:
                out["old_recall"] = self._recall(self.old_top, self.relevant)
                out["old_rr"] = self._rr(self.old_top, self.relevant)
        return out


def agreement_queries(options: VerifyOptions, sample: list[SampleRow]) -> tuple[list[LabelledQuery], str]:
    if options.queries:
        return options.queries, "--queries file"
    return ([LabelledQuery(query_from_text(r.text), (r.key,)) for r in sample],
            "sampled rows' own text (the row itself is the relevant answer)")


def agreement(conn: psycopg.Connection, subject: Subject, options: VerifyOptions, sample: list[SampleRow],
              target: Model, source: Model | None) -> CheckResult:
    name = "agreement"
    threshold = f">= -{options.margin:g}"
    queries, origin = agreement_queries(options, sample)
    evidence: dict[str, Any] = {"k": options.k, "queries_from": origin, "queries": len(queries),
                                "source": str(subject.plan.source_ref), "target": str(subject.plan.target_ref),
                                "margin": options.margin, "min_overlap": options.min_overlap}
    if not queries:
        return CheckResult(name, False, None, threshold, "no queries: no --queries and no rows to sample", evidence)
    if not target.available:
        return CheckResult(name, False, None, threshold, f"not checked: {target.error}", evidence)
    compare_old = not options.no_source and subject.old_column is not None
    if not options.no_source and subject.old_column is None:
        evidence["note"] = "the old column is gone: new model only"
    if compare_old and (source is None or not source.available):
        reason = source.error if source is not None else f"{subject.plan.source} not configured"
        return CheckResult(name, False, None, threshold,
                           f"cannot compare with the old model: {reason} (--no-source verifies without it)", evidence)
    texts = [q.query for q in queries]
    try:
        new_vectors = target.queries(texts)
    except ReembedError as exc:
        return CheckResult(name, False, None, threshold, f"not checked: {target.fail(exc)}", evidence)
    old_vectors: list[np.ndarray | None] = [None] * len(texts)
    if compare_old:
        assert source is not None
        try:
            old_vectors = source.queries(texts)
        except ReembedError as exc:
            return CheckResult(name, False, None, threshold,
                               f"cannot compare with the old model: {source.fail(exc)} (--no-source verifies without it)",
                               evidence)
    outcomes: list[QueryOutcome] = []
    for q, new_vec, old_vec in tqdm(list(zip(queries, new_vectors, old_vectors)), desc="agreement", unit="q",
                                    leave=False, disable=None if options.progress else True):
        if new_vec is None:
            continue
        new_top = search(conn, subject, subject.new_column, subject.new_type, new_vec, options.k)
        old_top = (search(conn, subject, subject.old_column, subject.old_type, old_vec, options.k,  # type: ignore[arg-type]
                          table=subject.old_table)
                   if compare_old and old_vec is not None else None)
        outcomes.append(QueryOutcome(q.query, q.relevant, new_top, old_top))
    return _verdict(name, threshold, options, outcomes, compare_old, evidence)


def _distribution(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"mean": round(float(a.mean()), 4), "min": float(a.min()), "p10": float(np.percentile(a, 10)),
            "median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "max": float(a.max())}


def _verdict(name: str, threshold: str, options: VerifyOptions, outcomes: list[QueryOutcome], compare_old: bool,
             evidence: dict[str, Any]) -> CheckResult:
    k = options.k
    per_query = [o.to_json(k) for o in outcomes]
    evidence["per_query"] = per_query
    problems: list[str] = []
    parts: list[str] = []
    value: float | None = None
    if compare_old:
        overlaps = [o.overlap(k) or 0.0 for o in outcomes]
        evidence["overlap"] = _distribution(overlaps)
        evidence["overlap_histogram"] = {f"{i}/{k}": sum(1 for o in overlaps if round(o * k) == i) for i in range(k + 1)}
        mean_overlap = evidence["overlap"]["mean"]
        parts.append(f"overlap@{k} mean {mean_overlap:.2f} (median {evidence['overlap']['median']:.2f})")
        if mean_overlap < options.min_overlap:
            problems.append(f"mean overlap@{k} {mean_overlap:.2f} < {options.min_overlap:g}")
    labelled = [p for p in per_query if "new_recall" in p]
    if labelled:
        table = {"queries": len(labelled),
                 "new": {"recall": _mean(labelled, "new_recall"), "mrr": _mean(labelled, "new_rr")}}
        if compare_old:
            table["old"] = {"recall": _mean(labelled, "old_recall"), "mrr": _mean(labelled, "old_rr")}
            deltas = {m: round(table["new"][m] - table["old"][m], 4) for m in ("recall", "mrr")}
            table["delta"] = deltas
            value = min(deltas.values())
            parts.append(f"recall@{k} new {table['new']['recall']:.3f} vs old {table['old']['recall']:.3f}, "
                         f"MRR new {table['new']['mrr']:.3f} vs old {table['old']['mrr']:.3f}")
            for metric, delta in deltas.items():
                if delta < -options.margin:
                    problems.append(f"new model's {'recall@' + str(k) if metric == 'recall' else 'MRR'} trails the "
                                    f"old by {-delta:.3f} (> margin {options.margin:g})")
        else:
            parts.append(f"recall@{k} new {table['new']['recall']:.3f}, MRR new {table['new']['mrr']:.3f}")
        evidence["labelled"] = table
    if not compare_old:
        parts.insert(0, "old model not compared (--no-source)" if options.no_source else "old model not compared")
    summary = "; ".join(problems) if problems else "; ".join(parts)
    if problems:
        summary += " — " + "; ".join(parts)
    return CheckResult(name, not problems and bool(outcomes), value, threshold, summary, evidence)


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return round(float(np.mean([r[key] for r in rows])), 4)
