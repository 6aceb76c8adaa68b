"""`reembed demo`: the whole lifecycle on a small real corpus, narrated step by step.

The lifecycle steps run the real `reembed` commands in this process (the same code a user
runs by hand), so what the demo shows is what the commands do. Only the embedding services
may be emulated, and the demo says so.
"""

from __future__ import annotations

import shlex
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import click
import psycopg

from toolkit import embedded
from toolkit.config import scrub
from toolkit.db import Database
from toolkit.demo import corpus, store
from toolkit.demo.narrate import Narrator
from toolkit.demo.providers import DemoProviders
from toolkit.demo.query import QueryResult, retrieval_sql, run_retrieval
from toolkit.query import embed_query
from toolkit.errors import GateFailed
from toolkit.plan import DEFAULT_SOURCE, DEFAULT_TARGET, Plan
from toolkit.providers.base import ModelRef

PLAN_NAME = "reembed-demo"
DEFAULT_ROWS = 2500
REAL_GEMINI_ROWS = 200  # the free tier takes 100 texts a minute; verify re-embeds a sample on top
DEFAULT_QUERY = "catch an exception with try, except and finally"
TOP_K = 5
# The lifecycle, as a user types it. {plan} and {file} are filled in; each must be a `reembed` command.
LIFECYCLE: tuple[tuple[str, str, list[str]], ...] = (
    ("inspect", "Inspect the table: key, vector column, index, what binds to the column",
     ["inspect", f"{store.SCHEMA}.{store.TABLE}"]),
    ("plan", "Plan the migration: validate against the live table, choose the strategy, estimate, write a plan file",
     ["plan", f"{store.SCHEMA}.{store.TABLE}", "--column", store.COLUMN, "--text", "content", "--title", "title",
      "--to", DEFAULT_TARGET, "--from", DEFAULT_SOURCE, "--name", PLAN_NAME, "--output", "{file}"]),
    ("run", "Run: make the place for the new vectors (a copy of the table, or a shadow column), track changes, "
            "fill it with the new model",
     ["run", "{plan}"]),
    ("index", "Index: build the same indexes on the new vectors, CONCURRENTLY",
     ["index", "{plan}"]),
    ("verify", "Verify: read-only gates before anything is swapped",
     ["verify", "{plan}"]),
    ("cutover", "Cut over: one short transaction swaps the new vectors in under the application's names",
     ["cutover", "{plan}"]),
)


@dataclass
class DemoOptions:
    dsn: str | None = None
    rows: int | None = None  # None: DEFAULT_ROWS, or REAL_GEMINI_ROWS against the real Gemini API
    force_emulators: bool = False
    query: str = DEFAULT_QUERY
    table_only: bool = False  # build and fill the table, then stop: practise the real job on it


@dataclass
class DemoResult:
    database: str
    rows: int = 0
    emulated: list[str] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    before: QueryResult | None = None
    after: QueryResult | None = None
    lock_ms: float | None = None
    verify_passed: bool | None = None
    missing: list[str] = field(default_factory=list)  # lifecycle commands this build does not have
    seconds: float = 0.0
    table_only: bool = False

    @property
    def same_sql(self) -> bool:
        return bool(self.before and self.after and self.before.sql_text == self.after.sql_text)


class LifecycleStepFailed(GateFailed):
    """A lifecycle command exited non-zero; its own one-line error was printed already."""

    def __init__(self, command: str, code: int) -> None:
        super().__init__(f"`{command}` failed (exit {code}); the demo stopped there. Run `reembed demo` again to "
                         "start over")
        self.exit_code = code if code in (1, 2, 3) else 1


def run_demo(options: DemoOptions, echo: Callable[[str], None] = click.echo) -> DemoResult:
    """Build the demo store, run the lifecycle on it, and narrate every step."""
    from toolkit.cli import cli

    started = time.perf_counter()
    db = Database.from_flag(options.dsn)
    available = [name for name, _, _ in LIFECYCLE if name in cli.commands]
    missing = [name for name, _, _ in LIFECYCLE if name not in cli.commands]
    if options.table_only:
        available, missing = [], []
    narrator = Narrator(total=3 + len(available) + (1 if available and not missing else 0), echo=echo)
    result = DemoResult(database=db.describe(), missing=missing, table_only=options.table_only)

    with DemoProviders(force_emulators=options.force_emulators) as providers, \
            tempfile.TemporaryDirectory(prefix="reembed-demo-") as workdir:
        result.emulated = [line for line in providers.describe() if "EMULATED" in line]
        if options.rows is None:
            options = replace(options, rows=DEFAULT_ROWS if providers.target_emulated else REAL_GEMINI_ROWS)
        narrator.banner([
            "reembed demo: re-embed a live pgvector table with a new model, without changing its SQL",
            f"database:  {db.describe()} (schema {store.SCHEMA} only; dropped and recreated by every run)",
            *[f"model:     {line}" for line in providers.describe()],
        ])
        if not providers.target_emulated:
            echo(f"note: the real Gemini API embeds {options.rows} rows plus verify's sample: this uses your quota "
                 "and, on the free tier (100 texts a minute), takes a few minutes. `--emulators` avoids it.")
        elif providers.any_real:
            echo("note: a real Ollama embeds the demo table; that takes longer than the emulator.")

        conn = db.connect()
        try:
            from toolkit.migrations import ensure_schema

            ensure_schema(conn, db.conninfo())
            store.check_owned(conn)  # refuse someone else's schema before doing anything
            _build_store(conn, narrator, options, result)
            result.before = _example_query(conn, narrator, options.query, ModelRef.parse(DEFAULT_SOURCE),
                                           when="before cutover")
            plan_file = Path(workdir) / f"reembed-{PLAN_NAME}.toml"
            for name, title, argv in LIFECYCLE:
                if name in missing or name not in available:
                    continue
                args = [a.format(plan=PLAN_NAME, file=plan_file) for a in argv]
                shown = [a.format(plan=PLAN_NAME, file=plan_file.name) for a in argv]
                with narrator.step(title, "reembed " + shlex.join(shown)):
                    _invoke(cli, args, options.dsn, shown)
                    _after_step(conn, name, narrator, result, plan_file)
            if missing:
                _say_missing(narrator, missing, echo)
            elif available:
                result.after = _example_query(conn, narrator, options.query, ModelRef.parse(DEFAULT_TARGET),
                                              when="after cutover", before=result.before)
        finally:
            conn.close()
            result.steps = [vars(s) for s in narrator.steps]
            result.seconds = time.perf_counter() - started
    _summary(narrator, result, providers, echo)
    return result


def _build_store(conn: psycopg.Connection, narrator: Narrator, options: DemoOptions, result: DemoResult) -> None:
    with narrator.step(f"Load {options.rows} passages of real text that ships with Python"):
        passages = corpus.passages(options.rows, cache_dir=embedded.data_dir().parent)
        sources = [s for s in (corpus.TOPICS, corpus.DOCSTRINGS) if any(p.source == s for p in passages)]
        narrator.note(f"{len(passages)} passages from {' and '.join(sources)}, "
                      f"median {sorted(len(p.content) for p in passages)[len(passages) // 2]} characters")
        narrator.note(f"e.g. [{passages[0].title}] {passages[0].content[:90].replace(chr(10), ' ')}...")
    with narrator.step(f"Create the RAG store {store.SCHEMA}.{store.TABLE} and fill it with {DEFAULT_SOURCE}"):
        removed = store.reset(conn)
        if removed:
            narrator.note(f"removed the previous demo run (plan {', '.join(removed)} and schema {store.SCHEMA})")
        store.create_table(conn)
        from toolkit.providers import make_embedder
        from toolkit.providers.settings import ProviderSettings

        embedder = make_embedder(ModelRef.parse(DEFAULT_SOURCE), store.DIMENSIONS, ProviderSettings.from_env())
        try:
            t0 = time.perf_counter()
            result.rows = store.load(conn, passages, embedder)
            loaded_s = time.perf_counter() - t0
        finally:
            embedder.close()
        t0 = time.perf_counter()
        store.build_index(conn)
        narrator.note(f"{result.rows} rows embedded and loaded in {loaded_s:.1f} s; HNSW (vector_cosine_ops, m=16) "
                      f"built in {time.perf_counter() - t0:.1f} s")
        narrator.note(f"CREATE TABLE {store.SCHEMA}.{store.TABLE} (id bigint PRIMARY KEY, title text, content text, "
                      f"{store.COLUMN} vector({store.DIMENSIONS}))")


def _example_query(conn: psycopg.Connection, narrator: Narrator, text: str, model: ModelRef, *, when: str,
                   before: QueryResult | None = None) -> QueryResult:
    task = "RETRIEVAL_QUERY" if model.provider == "gemini" else "the 'search_query: ' prefix"
    with narrator.step(f"The application's retrieval query, {when}"):
        vector = embed_query(model, store.DIMENSIONS, text)
        query = retrieval_sql(store.table_ident(), store.COLUMN, TOP_K)
        outcome = run_retrieval(conn, query, vector)
        held = store.column_model(conn, PLAN_NAME)
        narrator.note(f"question: {text!r}, embedded by {model} as a query ({task})")
        narrator.note(f"SQL:      {outcome.sql_text}")
        narrator.note(f"column {store.COLUMN} holds: {held}")
        narrator.note("plan:     " + (f"Index Scan using {outcome.index_used}" if outcome.index_used
                                      else "no index used (sequential scan)"))
        narrator.table([(i + 1, r[0], _short(r[1], 58), f"{r[2]:.4f}") for i, r in enumerate(outcome.rows)],
                       ["rank", "id", "title", "distance"])
        if before is not None:
            same = "IDENTICAL" if before.sql_text == outcome.sql_text else "DIFFERENT (this is a bug)"
            moved = len({r[0] for r in outcome.rows} ^ {r[0] for r in before.rows}) // 2
            narrator.note(f"SQL text before and after cutover: {same}; {moved} of the top {TOP_K} changed, "
                          "the distances are the new model's")
            if before.index_used and before.index_used == outcome.index_used:
                narrator.note(f"same index name: cutover renamed the new HNSW index to {outcome.index_used}")
    return outcome


def _invoke(cli: click.Group, args: list[str], dsn: str | None, shown: list[str]) -> None:
    """Run one `reembed` command in this process, as typed; a non-zero exit stops the demo."""
    argv = args + (["--dsn", dsn] if dsn else [])
    command = "reembed " + shlex.join(shown)
    try:
        cli.main(args=argv, prog_name="reembed", standalone_mode=False)
    except SystemExit as exc:  # handle_errors exits with the error's code after printing one line
        code = exc.code if isinstance(exc.code, int) else 1
        if code != 0:
            raise LifecycleStepFailed(command, code) from None
    except click.ClickException as exc:
        click.echo(f"reembed: error: {scrub(exc.format_message())}", err=True)
        raise LifecycleStepFailed(command, exc.exit_code) from None


def _after_step(conn: psycopg.Connection, name: str, narrator: Narrator, result: DemoResult, plan_file: Path) -> None:
    """What the database now says about the step that just ran, in one or two lines."""
    record = conn.execute("SELECT id, phase FROM reembed.plans WHERE name = %s", (PLAN_NAME,)).fetchone()
    if name == "plan" and plan_file.exists():
        narrator.note("the plan file (commit it beside your application) starts with:")
        for line in plan_file.read_text().splitlines()[:3]:
            narrator.note(f"  {line}")
    if record is None:
        return
    plan_id, phase = record
    if name == "verify":
        row = conn.execute("SELECT passed FROM reembed.verifications WHERE plan_id = %s ORDER BY id DESC LIMIT 1",
                           (plan_id,)).fetchone()
        result.verify_passed = bool(row[0]) if row else None
    if name == "cutover":
        row = conn.execute("SELECT lock_ms, attempts FROM reembed.swaps WHERE plan_id = %s AND direction = 'cutover' "
                           "ORDER BY id DESC LIMIT 1", (plan_id,)).fetchone()
        if row:
            result.lock_ms = float(row[0])
            narrator.note(f"the table was locked for {row[0]:.1f} ms ({row[1]} attempt{'s' if row[1] != 1 else ''}); "
                          "readers and writers waited at most that long")
    narrator.note(f"plan {PLAN_NAME} is now: {phase}")


def _say_missing(narrator: Narrator, missing: list[str], echo: Callable[[str], None]) -> None:
    echo("")
    echo(f"NOT DONE: this build of reembed has no `{'`, `'.join(missing)}` command yet, so the demo stops "
         "before the lifecycle is complete. Nothing was pretended: the steps above really ran.")


def _summary(narrator: Narrator, result: DemoResult, providers: DemoProviders, echo: Callable[[str], None]) -> None:
    echo("")
    echo("summary")
    echo(narrator.summary_table())
    lines = [f"total {result.seconds:.1f} s on {result.database}, {result.rows} rows"]
    if result.verify_passed is not None:
        lines.append(f"verify: {'all gates passed' if result.verify_passed else 'a gate FAILED'}")
    if result.lock_ms is not None:
        lines.append(f"cutover lock held for {result.lock_ms:.1f} ms")
    if result.before and result.after:
        lines.append("retrieval SQL text before/after cutover: " + ("identical" if result.same_sql else "DIFFERENT"))
    emulated = [line.split(":")[0] for line in result.emulated]
    lines.append("emulated: " + (", ".join(emulated) + " (vectors are deterministic stand-ins, not a model's; "
                                 "timings of embedding are not a real model's)" if emulated else "nothing"))
    for line in lines:
        echo(f"  {line}")
    if result.table_only:  # the lifecycle is the user's to run
        echo("")
        echo(f"practise the real job on {store.SCHEMA}.{store.TABLE} (it stays until the next `reembed demo`):")
        for hint in _practice_steps(providers):
            echo(f"  {hint}")
    elif not result.missing:
        echo("")
        echo("try next (the demo's table and plan stay until the next `reembed demo`):")
        for hint in _next_steps(result, providers):
            echo(f"  {hint}")


def _practice_steps(providers: DemoProviders) -> list[str]:
    table = f"{store.SCHEMA}.{store.TABLE}"
    hints = []
    if providers.source_emulated:
        hints += ["$ reembed emulator ollama     # in another shell; then export the OLLAMA_HOST it prints"]
    if providers.target_emulated:
        hints += ["$ reembed emulator gemini     # in another shell; then export what it prints"]
    return hints + [
        f"$ reembed inspect {table}",
        f"$ reembed plan {table} --column {store.COLUMN} --text content --title title --name practice --sql",
        "$ reembed run practice && reembed index practice && reembed verify practice",
        "$ reembed cutover practice      # then: reembed rollback practice, or reembed cleanup practice",
    ]


def _next_steps(result: DemoResult, providers: DemoProviders) -> list[str]:
    from toolkit.cli import cli

    hints = ["$ reembed plans", f"$ reembed status {PLAN_NAME}"]
    query = f"$ reembed embed-query 'how do I open a file' --plan {PLAN_NAME}"
    if providers.target_emulated:
        hints += ["$ reembed emulator gemini     # in another shell; it prints its URL",
                  "$ REEMBED_GEMINI_BASE_URL=<that URL> GOOGLE_API_KEY=emulator \\",
                  f"  {query[2:]}"]
    else:
        hints.append(query)
    if "rollback" in cli.commands:
        hints.append(f"$ reembed rollback {PLAN_NAME}   # swap back, as short a lock as the cutover")
    if "cleanup" in cli.commands:
        hints.append(f"$ reembed cleanup {PLAN_NAME}    # drop the old vectors for good")
    if result.database == "embedded PostgreSQL":
        hints.append(f"$ psql \"$(reembed db url)\" -c 'SELECT id, title FROM {store.SCHEMA}.{store.TABLE} LIMIT 5'")
    return hints


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
