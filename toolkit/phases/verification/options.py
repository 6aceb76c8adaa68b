"""What verify is asked to judge with (thresholds, sample size, k) and what each check answers."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from toolkit.errors import BadInput


@dataclass(frozen=True)
class LabelledQuery:
    """One line of a --queries file: the query text and, optionally, the keys of relevant rows."""

    query: str
    relevant: tuple[str, ...] = ()


@dataclass
class VerifyOptions:
    """Defaults are what `reembed verify` uses; every threshold has a flag."""

    sample: int = 100  # rows sampled for recall, re-embedding, self-retrieval and agreement
    k: int = 10
    queries: list[LabelledQuery] | None = None
    no_source: bool = False
    seed: str = "reembed-verify"  # fixed: the same table gives the same sample, so results repeat
    norm_tolerance: float = 1e-3
    max_duplicates: int = 0  # rows whose vector equals the vector of a different text
    outlier_sigmas: float = 4.0  # "looks like noise": cosine to the corpus centroid below sigmas/sqrt(dims)
    max_outliers: int = 0
    # freshness: rows the live application changed that wait, tracked, for re-embedding (run or
    # cutover's catch-up take them). None: 0.1% of the rows, at least 20 (as the cutover gate).
    max_pending: int | None = None
    min_recall: float = 0.95
    # ann_recall also passes at the original index's recall on the same queries and settings minus this:
    # a corpus hard for any approximate index is not the migration's fault.
    recall_margin: float = 0.02
    ef_search: int | None = None  # None: the session's hnsw.ef_search, i.e. what the application gets
    probes: int | None = None  # ivfflat.probes, likewise
    fidelity_cosine: float = 0.99  # a re-embedded row "matches" its stored vector at or above this cosine
    min_fidelity: float = 1.0  # fraction of sampled rows that must match
    min_self_retrieval: float = 0.9
    margin: float = 0.05  # the new model may trail the old by at most this on recall@k and MRR
    min_overlap: float = 0.0  # mean overlap@k of old and new top-k; informational by default
    progress: bool = True
    provider_settings: Any = None  # ProviderSettings; None: from the environment

    def __post_init__(self) -> None:
        if self.sample < 1:
            raise BadInput(f"--sample must be at least 1, not {self.sample}")
        if self.k < 1:
            raise BadInput(f"--k must be at least 1, not {self.k}")
        for name in ("min_recall", "fidelity_cosine", "min_fidelity", "min_self_retrieval", "min_overlap"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise BadInput(f"--{name.replace('_', '-')} must be between 0 and 1, not {value}")
        for name in ("norm_tolerance", "margin", "recall_margin", "outlier_sigmas"):
            if getattr(self, name) < 0:
                raise BadInput(f"--{name.replace('_', '-')} must not be negative")
        for name in ("max_duplicates", "max_outliers", "max_pending"):
            if (getattr(self, name) or 0) < 0:
                raise BadInput(f"--{name.replace('_', '-')} must not be negative")
        for name in ("ef_search", "probes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BadInput(f"--{name.replace('_', '-')} must be at least 1, not {value}")

    def public(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["queries"] = len(self.queries) if self.queries is not None else None
        out.pop("progress")
        out.pop("provider_settings")
        return out


@dataclass
class CheckResult:
    """One row of the verdict: name, measured value, threshold, verdict, and the evidence behind it."""

    name: str
    passed: bool
    value: Any
    threshold: Any
    summary: str  # one line a reviewer reads in the table
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "value": self.value, "threshold": self.threshold,
                "summary": self.summary, **self.evidence}
