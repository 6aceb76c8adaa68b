"""Checks of the new vector index: it is there, valid, serves the application's distance and is
used; and how many of the exact nearest neighbours its scan returns (ANN recall)."""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, TypeVar

import numpy as np
import psycopg
from psycopg import sql
from tqdm import tqdm

from toolkit.phases.verification.options import CheckResult, VerifyOptions
from toolkit.phases.verification.subject import DISTANCE_OPERATORS, IndexState, SampleRow, Subject, search_sql

T = TypeVar("T")

# Scan settings by index method: what the application's session uses unless --ef-search/--probes say.
_SEARCH_SETTING = {"hnsw": "hnsw.ef_search", "ivfflat": "ivfflat.probes"}


def _plan_indexes(plan: Any) -> set[str]:
    """Names of every index an EXPLAIN (FORMAT JSON) plan scans."""
    found: set[str] = set()
    stack = [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "Index Name" in node:
                found.add(node["Index Name"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _set_local(conn: psycopg.Connection, settings: dict[str, str]) -> None:
    for name, value in settings.items():
        conn.execute("SELECT set_config(%s, %s, true)", (name, value))


def _explain(conn: psycopg.Connection, query: sql.Composable, vector: np.ndarray,
             settings: dict[str, str]) -> set[str]:
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        _set_local(conn, settings)
        row = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(query), (vector,), prepare=False).fetchone()
    assert row is not None
    data = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return _plan_indexes(data)


def _probe_vector(conn: psycopg.Connection, subject: Subject, sample: list[SampleRow]) -> np.ndarray | None:
    if sample:
        return sample[0].vector
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        row = conn.execute(sql.SQL("SELECT {} FROM {} WHERE {} IS NOT NULL LIMIT 1").format(
            sql.Identifier(subject.new_column), subject.table, sql.Identifier(subject.new_column))).fetchone()
    return np.asarray(row[0].to_numpy() if hasattr(row[0], "to_numpy") else row[0], dtype=np.float32) if row else None


def _is_plain(subject: Subject, idx: IndexState) -> bool:
    """The index orders by the new column itself (not an expression of it)."""
    return idx.column == subject.new_column


def _probe_for(conn: psycopg.Connection, subject: Subject, idx: IndexState, sample: list[SampleRow]) -> object | None:
    """A query value of the index key's type: a sampled vector for the column itself; for an
    expression, the expression's value on some row (as text, cast by the query)."""
    if _is_plain(subject, idx):
        return _probe_vector(conn, subject, sample)
    # The key and the predicate are PostgreSQL's own deparse of the live index, not user input.
    where = sql.SQL(" AND ({})").format(sql.SQL(idx.predicate)) if idx.predicate else sql.SQL("")
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        row = conn.execute(sql.SQL("SELECT ({k})::text FROM {t} WHERE ({k}) IS NOT NULL{w} LIMIT 1").format(
            k=sql.SQL(idx.key), t=subject.table, w=where)).fetchone()
    return row[0] if row else None


def _planner_use(conn: psycopg.Connection, subject: Subject, idx: IndexState, probe: object, k: int) -> str:
    """Whether the planner takes `idx` for the query shape it serves: ORDER BY its key expression
    with its opclass's distance, under its predicate. used | usable (...) | not used."""
    query = search_sql(subject, subject.new_column, idx.key_base_type, limit=k, predicate=idx.predicate,
                       key=None if _is_plain(subject, idx) else idx.key, operator=idx.operator)
    if idx.names & _explain(conn, query, probe, {}):
        return "used"
    if idx.names & _explain(conn, query, probe, {"enable_seqscan": "off"}):
        # On a small table the planner rightly prefers a sequential scan; what matters is that it can use it.
        return "usable (the planner prefers a sequential scan at this table size)"
    return "not used"


def _shape(subject: Subject, idx: IndexState, k: int) -> str:
    key = subject.new_column if _is_plain(subject, idx) else idx.key
    return f"ORDER BY {key} {idx.operator} $1" + (f" WHERE {idx.predicate}" if idx.predicate else "") + f" LIMIT {k}"


def index(conn: psycopg.Connection, subject: Subject, options: VerifyOptions, sample: list[SampleRow]) -> CheckResult:
    """Every planned index on the new vectors is there, valid, of the original's kind; the main
    one serves the retrieval operator and the planner can use it."""
    plan = subject.plan
    if not plan.indexes:
        return CheckResult("index", True, "none planned", "-",
                           "the original column has no vector index and none was planned: queries scan exactly",
                           {"operator": subject.operator})
    result = _main_index(conn, subject, options, sample)
    others = list(zip(plan.indexes[1:], subject.new_indexes[1:], new_index_names(subject)[1:]))
    used: dict[str, str] = {}
    problems = [p for spec, idx, name in others
                for p in _other_index_problems(conn, subject, spec, idx, name, sample, options.k, used)]
    if others:
        result.evidence["other_indexes"] = [
            {"index": name, "exists": idx is not None, "valid": bool(idx and idx.valid and idx.ready),
             "opclass": idx.opclass if idx else None, "key": idx.key if idx else None,
             "predicate": idx.predicate if idx else None, "explain": used.get(name, "not checked")}
            for spec, idx, name in others]
    if problems:
        if result.passed:
            result.value = f"{len(problems)} problem(s) on the other indexes"
            result.summary = "; ".join(problems)
        else:
            result.summary = "; ".join([result.summary] + problems)
        result.passed = False
    return result


def new_index_names(subject: Subject) -> list[str]:
    """The names the planned indexes have on the new vectors in the plan's phase."""
    from toolkit.strategies import places

    return [n or spec.shadow_name for n, spec in zip(places(subject.plan, subject.record.phase).new.indexes,
                                                       subject.plan.indexes)]


def _other_index_problems(conn: psycopg.Connection, subject: Subject, spec: Any, idx: Any, name: str,
                          sample: list[SampleRow], k: int, used: dict[str, str]) -> list[str]:
    """What is wrong with one more planned index on the new vectors: missing, INVALID, of another
    kind, not reading the new column, or (a vector index) not taken by the planner for its shape."""
    from toolkit.phases.verification.subject import opclass_operator

    plan = subject.plan
    if idx is None:
        return [f"index {name} does not exist on {subject.new_column}: run `reembed index {plan.name}`"]
    out = []
    if not (idx.valid and idx.ready):
        out.append(f"index {idx.name} is INVALID: run `reembed index {plan.name}` again")
    if idx.method != spec.method:
        out.append(f"index {idx.name} is {idx.method}, the original is {spec.method}")
    if subject.new_column not in idx.reads:
        out.append(f"index {idx.name} does not read {subject.new_column}")
    wanted = opclass_operator(conn, spec.method, spec.opclass)
    if idx.operator != wanted:
        out.append(f"index {idx.name} ({idx.opclass}) serves {idx.operator}, the original served {wanted}")
    if out or not spec.orders_by_distance or idx.operator not in DISTANCE_OPERATORS:
        return out
    probe = _probe_for(conn, subject, idx, sample)
    if probe is None:
        used[name] = "not checked: no row to query with"
        return out
    used[name] = _planner_use(conn, subject, idx, probe, k)
    if used[name] == "not used":
        out.append(f"EXPLAIN of {_shape(subject, idx, k)} does not use {idx.name}, even with sequential scans off")
    return out


def _main_index(conn: psycopg.Connection, subject: Subject, options: VerifyOptions,
                sample: list[SampleRow]) -> CheckResult:
    plan = subject.plan
    main = plan.indexes[0]
    idx = subject.new_index
    evidence: dict[str, Any] = {"index": new_index_names(subject)[0] if idx is None else idx.name,
                                "retrieval_operator": subject.operator,
                                "retrieval_distance": DISTANCE_OPERATORS.get(subject.operator),
                                "operator_from": subject.operator_origin}
    if idx is None:
        return CheckResult("index", False, "missing", f"valid, serves {subject.operator}, usable",
                           f"index {evidence['index']} does not exist on {subject.new_column}: "
                           f"run `reembed index {plan.name}`", evidence)
    evidence.update({"method": idx.method, "opclass": idx.opclass, "opclass_operator": idx.operator,
                     "options": idx.options, "valid": idx.valid, "ready": idx.ready, "predicate": idx.predicate,
                     "planned": {"method": main.method, "opclass": main.opclass, "options": main.options}})
    problems = []
    if not (idx.valid and idx.ready):
        problems.append(f"index {idx.name} is INVALID (indisvalid={idx.valid}, indisready={idx.ready}): an "
                        f"interrupted CONCURRENTLY build; run `reembed index {plan.name}` again")
    if subject.new_column not in idx.reads:
        problems.append(f"index {idx.name} does not read {subject.new_column}")
    if idx.method != main.method:
        problems.append(f"index {idx.name} is {idx.method}, the original is {main.method}")
    if idx.operator != subject.operator:
        problems.append(f"opclass {idx.opclass} serves {idx.operator}, but the retrieval query orders by "
                        f"{subject.operator} ({subject.operator_origin}): the index cannot serve the query")
    used = "not checked"
    probe = _probe_for(conn, subject, idx, sample)
    if probe is not None and not problems:
        used = _planner_use(conn, subject, idx, probe, options.k)
        if used == "not used":
            problems.append(f"EXPLAIN of {_shape(subject, idx, options.k)} does not use {idx.name}, even with "
                            "sequential scans off")
    evidence["explain"] = used
    evidence["query_shape"] = _shape(subject, idx, options.k)
    option_diff = {k: (v, idx.options.get(k)) for k, v in main.options.items() if idx.options.get(k) != v}
    if option_diff:
        evidence["options_differ_from_plan"] = option_diff  # a note: recall judges whether it matters
    threshold = f"valid, serves {subject.operator}, usable"
    if problems:
        short = ("INVALID" if not (idx.valid and idx.ready) else
                 f"{idx.opclass} serves {idx.operator}" if idx.operator != subject.operator else used)
        return CheckResult("index", False, short, threshold, "; ".join(problems), evidence)
    return CheckResult("index", True, f"valid, {idx.opclass}, {used.split(' ')[0]}", threshold,
                       f"{idx.name}: {idx.method} {idx.opclass} (serves {subject.operator}, as {subject.operator_origin}),"
                       f" valid and ready, {used}", evidence)


def _top(conn: psycopg.Connection, query: sql.Composable, vector: np.ndarray,
         settings: dict[str, str], setting_name: str | None) -> tuple[list[str], float, str | None]:
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        _set_local(conn, settings)
        started = time.perf_counter()
        rows = conn.execute(query, (vector,), prepare=False).fetchall()
        elapsed = time.perf_counter() - started
        current = conn.execute("SELECT current_setting(%s, true)", (setting_name,)).fetchone()[0] \
            if setting_name else None  # type: ignore[index]
    return [r[0] for r in rows], elapsed, current


Query = tuple[str | None, np.ndarray]  # (the key of the row the query was made from, to leave out; vector)


def _recall_on(conn: psycopg.Connection, subject: Subject, options: VerifyOptions, column: str, column_type: str,
               idx: IndexState, queries: list[Query], what: str,
               table: sql.Identifier | None = None) -> dict[str, Any] | str:
    """recall@k of `idx` against an exact scan of `column` (in `table`, default the new vectors')
    for `queries`, at the same scan settings for every column (--ef-search / --probes, else the
    session's): its figures, or why not measurable."""
    setting_name = _SEARCH_SETTING.get(idx.method)
    scan_settings = {"enable_seqscan": "off"}
    chosen = options.ef_search if idx.method == "hnsw" else options.probes
    if setting_name and chosen is not None:
        scan_settings[setting_name] = str(chosen)
    exact_settings = {"enable_indexscan": "off", "enable_bitmapscan": "off", "enable_indexonlyscan": "off"}
    limit = options.k + 1
    # An expression index (`(embedding)::halfvec(768)`) serves ORDER BY its key, not the column.
    key = None if idx.column == column else idx.key
    column_type = column_type if key is None else idx.key_base_type
    ann_query = search_sql(subject, column, column_type, limit=limit, predicate=idx.predicate, table=table, key=key)
    exact_query = search_sql(subject, column, column_type, limit=limit, exact=True, predicate=idx.predicate,
                             table=table, key=key)
    ann_plan = _explain(conn, ann_query, queries[0][1], scan_settings)
    exact_plan = _explain(conn, exact_query, queries[0][1], exact_settings)
    plans = {"index_plan_uses": sorted(ann_plan), "exact_plan_uses": sorted(exact_plan)}
    if not idx.names & ann_plan or exact_plan:
        return (f"could not get the plans to compare on {column} (index scan uses {sorted(ann_plan)}, "
                f"exact scan uses {sorted(exact_plan)})")
    recalls: list[float] = []
    ann_seconds = exact_seconds = 0.0
    current: str | None = None
    for own_key, vector in _progress(queries, options, what):
        ann, t_ann, current = _top(conn, ann_query, vector, scan_settings, setting_name)
        exact, t_exact, _ = _top(conn, exact_query, vector, exact_settings, None)
        ann_seconds += t_ann
        exact_seconds += t_exact
        truth = [key for key in exact if key != own_key][: options.k]
        got = set([key for key in ann if key != own_key][: options.k])
        if truth:
            recalls.append(len(got.intersection(truth)) / len(truth))
    if not recalls:
        return "the table has too few rows to measure recall"
    values = np.asarray(recalls)
    return {**plans, "recall": round(float(values.mean()), 4), "queries": len(recalls), "setting": setting_name,
            "setting_value": current, "min": float(values.min()), "p10": float(np.percentile(values, 10)),
            "median": float(np.median(values)), "index_ms_per_query": round(1000 * ann_seconds / len(recalls), 3),
            "exact_ms_per_query": round(1000 * exact_seconds / len(recalls), 3)}


def _stored(sample: list[SampleRow], old: bool = False) -> list[Query]:
    return [(row.key, row.old_vector if old else row.vector) for row in sample
            if (row.old_vector if old else row.vector) is not None]


def _baseline(conn: psycopg.Connection, subject: Subject, options: VerifyOptions, sample: list[SampleRow],
              new_queries_are_model_queries: bool, source_query_vectors: list[np.ndarray | None] | None,
              new_recall: float) -> dict[str, Any]:
    """The original column measured the same way: its index against an exact scan of it, for the
    same texts (the source model's query vectors of them, as the application asks today), at the
    same scan settings. Without the source model, both columns are measured with the sampled rows'
    stored vectors. Says which baseline was used, or why there is none."""
    old = subject.old_index
    if subject.old_column is None:
        return {"used": "none", "why": "the original column is gone"}
    if old is None or not (old.valid and old.ready) or old.operator != subject.operator:
        return {"used": "none", "why": f"the original column {subject.old_column} has no valid index serving "
                                       f"{subject.operator}"}
    if new_queries_are_model_queries and source_query_vectors and any(v is not None for v in source_query_vectors):
        queries: list[Query] = [(None, v) for v in source_query_vectors if v is not None]
        measured = _recall_on(conn, subject, options, subject.old_column, subject.old_type, old, queries,
                              "ann recall (original)", table=subject.old_table)
        origin = f"{subject.plan.source} query vectors of the same sampled rows' text"
        compared_new: float | dict[str, Any] | str = new_recall
    else:
        queries = _stored(sample, old=True)
        if not queries:
            return {"used": "none", "why": "no sampled row has a vector in the original column"}
        measured = _recall_on(conn, subject, options, subject.old_column, subject.old_type, old, queries,
                              "ann recall (original)", table=subject.old_table)
        origin = "the sampled rows' stored vectors, each row left out (no source model to embed queries)"
        compared_new = new_recall
        if new_queries_are_model_queries:  # like for like: the new column with its stored vectors too
            assert subject.new_index is not None
            compared_new = _recall_on(conn, subject, options, subject.new_column, subject.new_type,
                                      subject.new_index, _stored(sample), "ann recall (new, stored vectors)")
            if isinstance(compared_new, dict):
                compared_new = compared_new["recall"]
    if isinstance(measured, str):
        return {"used": "none", "why": measured}
    if isinstance(compared_new, str):
        return {"used": "none", "why": compared_new}
    return {"used": f"original column {subject.old_column}, index {old.name}", "queries_from": origin,
            "original_recall": measured["recall"], "new_recall_compared": compared_new, "original": measured}


def ann_recall(conn: psycopg.Connection, subject: Subject, options: VerifyOptions, sample: list[SampleRow],
               query_vectors: list[np.ndarray | None] | None = None,
               source_query_vectors: list[np.ndarray | None] | None = None) -> CheckResult:
    """recall@k of the index scan against an exact scan, for sampled query vectors, judged against
    the original column's own index measured the same way.

    The queries are the target's RETRIEVAL_QUERY vectors of the sampled rows' text (what the
    application will send) when the target answered; else the sampled rows' stored vectors,
    with the query row itself dropped from both lists (both would find it: it would flatter the
    figure). The exact scan runs unprepared, with index scans off and an ORDER BY no index can
    serve; EXPLAIN confirms which plan each side really got.

    Some corpora are hard for any approximate index at the application's settings (short,
    loosely related texts: the default hnsw.ef_search=40 finds ~0.93 of the true neighbours): the
    gate is met by --min-recall, or by recall no lower than the original index's on the same
    queries and settings minus --recall-margin. The migration must not make retrieval worse.
    """
    name = "ann_recall"
    idx = subject.new_index
    if not subject.plan.indexes:
        return CheckResult(name, True, "n/a", options.min_recall, "no vector index: queries are exact", {})
    if idx is None or not (idx.valid and idx.ready) or idx.operator != subject.operator:
        return CheckResult(name, False, None, options.min_recall,
                           "not measurable: the new index is missing, invalid or cannot serve the retrieval operator",
                           {})
    if not sample:
        return CheckResult(name, False, None, options.min_recall, "no rows with vectors to query with", {})
    model_queries = query_vectors is not None and any(v is not None for v in query_vectors)
    if model_queries:
        queries: list[Query] = [(None, v) for v in query_vectors or [] if v is not None]
        origin = f"{subject.plan.target} query vectors of the sampled rows' text"
    else:
        queries = _stored(sample)
        origin = "the sampled rows' stored vectors (each row itself left out)"
    if not _is_plain(subject, idx) and idx.key_dimensions not in (None, subject.plan.dimensions):
        return CheckResult(name, True, "n/a", options.min_recall,
                           f"not applicable: the main index orders by {idx.key}, of {idx.key_dimensions} dimensions, "
                           f"not by the {subject.plan.dimensions}-dimensional vectors queries are made of", {})
    measured = _recall_on(conn, subject, options, subject.new_column, subject.new_type, idx, queries, "ann recall")
    evidence: dict[str, Any] = {"k": options.k, "queries_from": origin}
    if isinstance(measured, str):
        return CheckResult(name, False, None, options.min_recall, measured, evidence)
    mean = measured["recall"]
    evidence.update(measured)
    baseline = _baseline(conn, subject, options, sample, model_queries, source_query_vectors, mean)
    evidence["baseline"] = baseline
    evidence["min_recall"] = options.min_recall
    evidence["recall_margin"] = options.recall_margin
    at = f" at {measured['setting']}={measured['setting_value']}" if measured["setting"] else ""
    summary = (f"recall@{options.k} {mean:.3f}{at} over {measured['queries']} queries (min {measured['min']:.2f}); "
               f"index {measured['index_ms_per_query']} ms vs exact {measured['exact_ms_per_query']} ms per query")
    threshold: Any = options.min_recall
    passed = mean >= options.min_recall
    if "original_recall" in baseline:
        original, compared = baseline["original_recall"], baseline["new_recall_compared"]
        floor = round(original - options.recall_margin, 4)
        threshold = f">= {options.min_recall:g} or >= original {original:.3f} - {options.recall_margin:g}"
        like = "" if compared == mean else f" (new {compared:.3f} on the same stored-vector queries)"
        summary += f"; original index {original:.3f} on the same queries and settings{like}"
        passed = passed or compared >= floor
        if not passed:
            summary += f": the new index trails the original by more than {options.recall_margin:g}"
    else:
        summary += f"; no baseline ({baseline['why']}): judged against {options.min_recall:g} alone"
    return CheckResult(name, passed, mean, threshold, summary, evidence)


def _progress(items: list[T], options: VerifyOptions, what: str) -> Iterable[T]:
    return tqdm(items, desc=what, unit="q", leave=False, disable=None if options.progress else True)
