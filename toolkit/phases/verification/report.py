"""The verdict as a reviewer reads it: one table (check, value, threshold, verdict), what each
check found, the agreement distribution per query, and the labelled side-by-side table."""

from __future__ import annotations

from typing import Any

from toolkit.render import table

BAR = 30


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def checks_table(checks: list[dict[str, Any]]) -> str:
    return table([(c["name"], _cell(c["value"]), _cell(c["threshold"]), "pass" if c["passed"] else "FAIL")
                  for c in checks], ["check", "value", "threshold", "verdict"])


def overlap_histogram(agreement: dict[str, Any]) -> list[str]:
    histogram = agreement.get("overlap_histogram")
    if not histogram:
        return []
    k = agreement["k"]
    dist = agreement["overlap"]
    most = max(histogram.values()) or 1
    out = [f"agreement: overlap@{k} of old and new top-{k}, per query ({agreement['queries']} queries from "
           f"{agreement['queries_from']})",
           f"  mean {dist['mean']:.2f}  min {dist['min']:.2f}  p10 {dist['p10']:.2f}  median {dist['median']:.2f}  "
           f"p90 {dist['p90']:.2f}  max {dist['max']:.2f}"]
    for bucket, count in histogram.items():
        out.append(f"  {bucket:>6}  {'#' * round(BAR * count / most):<{BAR}}  {count}")
    return out


def labelled_table(agreement: dict[str, Any]) -> list[str]:
    labelled = agreement.get("labelled")
    if not labelled:
        return []
    k = agreement["k"]
    old = labelled.get("old")
    headers = ["metric"] + ([f"old ({agreement['source']})"] if old else []) + [f"new ({agreement['target']})"] + (
        ["delta"] if old else [])
    rows = []
    for metric, label in (("recall", f"recall@{k}"), ("mrr", "MRR")):
        row: list[str] = [label]
        if old:
            row.append(f"{old[metric]:.3f}")
        row.append(f"{labelled['new'][metric]:.3f}")
        if old:
            row.append(f"{labelled['delta'][metric]:+.3f}")
        rows.append(row)
    margin = f"; the new model may trail by at most {agreement['margin']:g}" if old else ""
    return [f"labelled queries ({labelled['queries']}){margin}:", table(rows, headers)]


def verify_report(result: dict[str, Any]) -> str:
    checks = result["checks"]
    failed = [c["name"] for c in checks if not c["passed"]]
    verdict = "PASSED" if result["passed"] else f"FAILED ({', '.join(failed)})"
    out = [f"verify {result['plan']}: {verdict}", "", checks_table(checks), ""]
    width = max(len(c["name"]) for c in checks)
    for c in checks:
        out.append(f"  {c['name']:<{width}}  {c['summary']}")
    coverage = next((c for c in checks if c["name"] == "coverage"), None)
    if coverage and coverage.get("skipped"):
        out += ["", "skipped rows (from the ledger):"]
        out.append(table([(s["reason"], s["rows"], ", ".join(s["examples"])) for s in coverage["skipped"]],
                         ["reason", "rows", "examples"]))
    agreement = next((c for c in checks if c["name"] == "agreement"), None)
    if agreement:
        for block in (overlap_histogram(agreement), labelled_table(agreement)):
            if block:
                out += [""] + block
    writes = result.get("live_writes") or {}
    if writes.get("rows_changed"):
        out += ["", f"live writes: {writes['rows_changed']} rows changed while verify ran ({writes['seconds']:.1f} s, "
                    f"{writes['rows_per_second']:.2f} rows/s); cutover accepts changes at about that rate "
                    "(re-embedded by the same guarded path), a burst beyond it asks for another verify"]
    elif result.get("state_changed_during_verify"):
        out += ["", "note: the index changed while verify ran; cutover will ask for another verify"]
    out += ["", f"phase: {result['phase']}; verification #{result['verification_id']} stored "
                f"(state {result['state_token'][:12]}); cutover requires a passing verification of the current state"]
    return "\n".join(out)
