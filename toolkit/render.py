"""Human-readable reports. JSON output never goes through here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from toolkit import surroundings as around
from toolkit.catalog import TableInfo
from toolkit.plan import Plan
from toolkit.strategies import strategy_for

if TYPE_CHECKING:
    from toolkit.phases.status import PlanStatus


def size(n: int | float) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def inspect_report(info: TableInfo, surroundings: around.Surroundings | None = None) -> str:
    out = [f"table {info.qualified}: ~{info.rows_estimate} rows; heap {size(info.heap_bytes)}, "
           f"TOAST {size(info.toast_bytes)}, indexes {size(info.index_bytes)}"]
    pk = ", ".join(f"{c.name} {c.type}" for c in info.primary_key) or "NONE (reembed needs one)"
    out.append(f"primary key: {pk}")
    out.append("\nvector columns:")
    if info.vector_columns:
        out.append(table([(c.name, c.base_type, c.dimensions or "unsized", "NOT NULL" if c.not_null else "")
                          for c in info.vector_columns], ["column", "type", "dims", "null"]))
    else:
        out.append("  none")
    out.append("\ntext columns: " + (", ".join(f"{c.name} ({c.type})" for c in info.text_columns) or "none"))
    out.append("\nvector indexes:")
    if info.indexes:
        out.append(table([(i.name, i.column or "(expression)", i.method, i.opclass,
                           ", ".join(f"{k}={v}" for k, v in i.options.items()),
                           "valid" if i.valid and i.ready else "INVALID", size(i.size_bytes))
                          for i in info.indexes], ["index", "column", "method", "opclass", "options", "state", "size"]))
    else:
        out.append("  none")
    out.append("\nbound to a vector column by number (cutover re-creates these):")
    if info.dependents:
        out.append(table([(d.kind, d.name, d.column) for d in info.dependents], ["kind", "name", "column"]))
    else:
        out.append("  none")
    if surroundings is not None:
        out.append("\napplication triggers (column strategy):")
        out += [f"  {note}" for note in around.trigger_notes(surroundings)] or ["  none"]
        out.append("\npublications carrying the table:")
        out += [f"  {p.name}: " + ("FOR ALL TABLES" if p.all_tables else "FOR TABLES IN SCHEMA" if p.via_schema
                                   else "FOR TABLE") + (f" ({', '.join(p.columns)})" if p.columns else "")
                + f", publishes {', '.join(p.operations)}" for p in surroundings.publications] or ["  none"]
        if surroundings.all_tables_publications:
            out.append(f"  FOR ALL TABLES publication(s) {', '.join(surroundings.all_tables_publications)} also "
                       "publish reembed's own schema: `reembed plan` says what their subscribers need")
    return "\n".join(out)


def statements_report(statements: Sequence[str], checked: str) -> str:
    """The application's statements that depend on the table's column positions."""
    out = ["\nstatements using SELECT *, RETURNING * or INSERT without a column list (a new or moved column "
           "breaks them: the copy strategy keeps them working):"]
    out += [f"  {q}" for q in statements] or ["  none found"]
    out.append(f"  ({checked})")
    return "\n".join(out)


def plan_report(plan: Plan, path: str, preflight: str, triggers: Sequence[str] = (),
                subscribers: Sequence[str] = ()) -> str:
    e = plan.estimate
    steps = [
        f"plan {plan.name!r} written to {path} and registered",
        f"  {plan.table_display}.{plan.column}: {plan.source} -> {plan.target}, {plan.dimensions} dims"
        + (f" (from {plan.source_dimensions}: the column becomes {plan.new_column_type}; queries are embedded at "
           f"{plan.dimensions} dims from the cutover on)" if plan.dimensions != plan.source_dimensions else ""),
        f"  text: {' + '.join(plan.text_columns)}" + (f", title: {plan.title_column}" if plan.title_column else ""),
        f"  strategy: {plan.strategy}" + (f" ({plan.choice['chosen_by']})" if plan.choice else ""),
        f"  preflight: {preflight}",
        "",
        "what will happen:",
        *[f"  {line}" for line in strategy_for(plan).describe(plan)],
    ]
    if e:
        steps += [
            "",
            "estimate:",
            f"  rows to embed     {e.rows_to_embed} of {e.rows_total} ({e.rows_empty} empty, skipped)",
            f"  API requests      {e.http_requests} HTTP requests; {e.quota_requests} against a per-text quota",
            f"  tokens            ~{e.tokens}",
            (f"  time at quota     ~{e.days_at_quota:g} days at {e.rpd} texts/day (the daily cap binds; "
             f"{e.minutes_at_quota} min at {e.rpm} texts/min otherwise)" if e.days_at_quota else
             f"  time at quota     ~{e.minutes_at_quota} min at {e.rpm} texts/min, {e.tpm} tokens/min"
             + (f", {e.rpd} texts/day" if e.rpd else "")),
            f"  cost at list      ~${e.cost_usd:.4f} online"
            + (f"; ~${e.batch_cost_usd:.4f} with --batch-api ({e.batch_jobs} batch jobs, each done within "
               "24 h, usually much sooner; no per-minute quota)" if e.batch_jobs else ""),
            f"  extra disk        ~{size(e.shadow_column_bytes)} {strategy_for(plan).disk_label}"
            + (f", ~{size(e.shadow_index_bytes)} index" if e.shadow_index_bytes else ""),
        ]
    if triggers:
        steps += ["", "application triggers:"] + [f"  {t}" for t in triggers]
    if subscribers:
        steps += ["", "logical replication:"] + [f"  {s}" for s in subscribers]
    steps += choice_report(plan.choice, plan.estimate)
    return "\n".join(steps)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def duration(seconds: float | None) -> str:
    """`1h02m`, `4m05s`, `12s`; `-` when unknown."""
    if seconds is None:
        return "-"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def status_report(s: "PlanStatus") -> str:
    p = s.progress
    lines = [f"plan {s.name}: phase {s.phase} ({s.strategy} strategy)",
             f"  the application reads {s.reads}",
             f"  {s.target_model} vectors: {s.new_vectors or 'dropped'}; {s.source_model} vectors: "
             f"{s.old_vectors or 'dropped'}"]
    if p.rows_total:
        lines.append(f"  rows: {p.rows_embedded} of {p.rows_total} embedded, {p.rows_skipped} skipped, {p.rows_pending} "
                     f"pending ({percent(s.percent)} done); {s.rows_per_second:g} rows/s over the last minute, "
                     f"{duration(s.eta_seconds)} left at that rate")
        lines.append(f"  leases: {p.leases_held} rows held by {p.lease_holders} process(es); "
                     f"{p.rows_embedded_more_than_once} rows embedded more than once")
    if s.last_event:
        lines.append(f"  last event {s.last_event['at']}: {s.last_event['message']}")
    lines += [f"  {hint}" for hint in s.hints]
    return "\n".join(lines)


def choice_report(choice: dict[str, Any] | None, estimate: Any = None) -> list[str]:
    """Both strategies side by side (what the application sees, disk, time) and the recommendation."""
    if not choice:
        return []
    out = ["", "choosing a strategy:"]
    time_note = (f"~{estimate.minutes_at_quota} min at the quota for either: the provider bounds the time, "
                 "not the strategy" if estimate else "the same for either: the provider bounds the time")
    for view in choice["views"]:
        mark = " (recommended)" if view["name"] == choice["recommended"] else ""
        out.append(f"  {view['name']}{mark}:")
        if view.get("refused"):
            out.append(f"    not possible here: {view['refused']}")
            continue
        out.append("    the application sees:")
        out += [f"      - {line}" for line in view["application_sees"]]
        out.append(f"    disk: {view['disk_note']}")
        out.append(f"    time: {time_note}")
    verb = "took" if choice["chosen_by"] == "recommendation" else "recommends"
    out.append(f"  reembed {verb} {choice['recommended']}: " + "; ".join(choice["reasons"]))
    if choice["chosen_by"] != "recommendation" and choice["chosen"] != choice["recommended"]:
        out.append(f"  --strategy {choice['chosen']} overrides it")
    detected = choice.get("detected") or {}
    if detected.get("statements_checked"):
        out.append(f"  ({detected['statements_checked']})")
    return out
