"""Items 5 and 6, hostile input: identifiers with quotes, spaces, unicode, upper case and SQL
keywords through the whole lifecycle; texts with NUL bytes, 1 MB, unicode, blank; plan files
edited by hand into something invalid or malicious; a DSN password and an API key that must
appear in no output, log, plan file or stored row; two plans on one column at once; a table
changed since planning, refused by `run` and `cutover` with the difference named.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg import sql

from backfill_support import API_KEY, gemini  # noqa: F401 (fixture)
from cli_support import error_lines
from reliability_support import assert_nothing_lost, ledger, record, reembed_process, scan_for
from tables import create_docs, passage

SCHEMA = 'Ünï "Schema"; drop'
TABLE = 'My "Docs" Table'
PK = "Order Id"
TEXT = 'Content"; DROP TABLE x; --'
TITLE = "TITLE"
VECTOR = "user"  # a reserved word
MEGABYTE = ("Ω reembed ünïcode 多言語 " * 40000)[:1_000_000]


def _hostile_table(conn: psycopg.Connection, rows: int) -> sql.Identifier:
    table = sql.Identifier(SCHEMA, TABLE)
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    conn.execute(sql.SQL("CREATE TABLE {} ({} bigint PRIMARY KEY, {} text, {} text, {} vector(768))").format(
        table, sql.Identifier(PK), sql.Identifier(TITLE), sql.Identifier(TEXT), sql.Identifier(VECTOR)))
    rng = np.random.default_rng(3)
    texts: list[str | None] = [passage(i) for i in range(rows)]
    texts[1] = ""
    texts[2] = "   \n\t "
    texts[3] = None
    texts[4] = MEGABYTE
    texts[5] = "مرحبا بالعالم — 你好，世界 — 🧭🚀 — ünïcödé"
    texts[6] = "control characters \x01\x07\x1b[31m are kept"
    texts[7] = "'; DROP TABLE docs; -- \"quoted\" $$dollar$$"
    with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(table)) as copy:
        for i, text in enumerate(texts):
            v = rng.standard_normal(768).astype(np.float32)
            copy.write_row((i, f"Títle {i % 7} \"q\"" if i % 3 else None, text, v / np.linalg.norm(v)))
    conn.execute(sql.SQL("CREATE INDEX {} ON {} USING hnsw ({} vector_cosine_ops)").format(
        sql.Identifier('Idx "Vec" ü'), table, sql.Identifier(VECTOR)))
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    return table


def test_hostile_identifiers_and_texts_through_the_whole_lifecycle(conn, run_cli, gemini) -> None:  # type: ignore[no-untyped-def]
    rows = 120
    table = _hostile_table(conn, rows)
    qualified = table.as_string(conn)  # the SQL-quoted form a user would paste
    result = run_cli("plan", qualified, "--strategy", "column", "--column", VECTOR, "--text", TEXT, "--title", TITLE, "--name", "hostile",
                     "--offline", "-o", "hostile.toml")
    assert result.exit_code == 0, result.output
    run = run_cli("run", "hostile", "--json", "--no-progress", "--batch-size", "40")
    assert run.exit_code == 0, run.output
    summary = json.loads(run.stdout)
    # Blank texts (empty, whitespace, NULL) are skipped with a reason, the 1 MB text cut and counted.
    assert summary["rows_skipped"] == 3 and summary["truncated"] == 1, summary
    reasons = {r[0] for r in conn.execute("SELECT skip_reason FROM reembed.ledger WHERE state = 'skipped'")}
    assert reasons == {"empty text"}
    assert_nothing_lost(conn, "hostile")
    for step in (("index", "hostile", "--no-progress"), ("verify", "hostile", "--no-source", "--max-outliers", "8"),
                 ("cutover", "hostile"), ("rollback", "hostile"),
                 ("verify", "hostile", "--no-source", "--max-outliers", "8"), ("cutover", "hostile")):
        res = run_cli(*step)
        assert res.exit_code == 0, (step, res.output)
    assert_nothing_lost(conn, "hostile")
    # The application's query, written with the same identifiers, reads the new vectors by index.
    q = conn.execute(sql.SQL("SELECT {} FROM {} WHERE {} = 0").format(
        sql.Identifier(VECTOR), table, sql.Identifier(PK))).fetchone()[0]
    top = conn.execute(sql.SQL("SELECT {} FROM {} ORDER BY {} <=> %s LIMIT 1").format(
        sql.Identifier(PK), table, sql.Identifier(VECTOR)), (q,)).fetchone()[0]
    assert top == 0
    record("5 hostile input", "quotes, spaces, unicode, upper case, SQL keywords in schema/table/columns/index; "
           "blank, 1 MB, unicode, control-character texts; plan→run→index→verify→cutover→rollback→cutover",
           "completed; nothing lost", rows=rows, skipped_blank=summary["rows_skipped"],
           truncated=summary["truncated"])
    res = run_cli("cleanup", "hostile", "--yes")
    assert res.exit_code == 0, res.output
    cols = [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", (qualified,))]
    assert cols == [PK, TITLE, TEXT, VECTOR]
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                        (qualified,)).fetchone()[0] == 0
    record("5 hostile input", "the same table: cleanup", "completed: only the original columns, no trigger")


def test_nul_bytes_cannot_reach_reembed_through_a_text_column(conn) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL `text` cannot hold NUL: the boundary is the application's own INSERT. So there
    is no NUL for reembed to send (nor a bytea→text path, which fails the same way)."""
    create_docs(conn, 1, index=None)
    with pytest.raises(psycopg.DataError, match="NUL"):
        conn.execute("INSERT INTO docs (id, content) VALUES (99, %s)", ("before\x00after",))
    with pytest.raises(psycopg.errors.SyntaxError, match="invalid Unicode escape"):
        conn.execute(r"INSERT INTO docs (id, content) VALUES (99, E'before\u0000after')")
    with pytest.raises(psycopg.errors.CharacterNotInRepertoire):  # bytea -> text: the same wall
        conn.execute(r"INSERT INTO docs (id, content) VALUES (99, convert_from('\x610062'::bytea, 'UTF8'))")
    with pytest.raises(psycopg.errors.UntranslatableCharacter):  # JSON -> text too
        conn.execute("""INSERT INTO docs (id, content) VALUES (99, '{"t": "a\\u0000b"}'::jsonb->>'t')""")
    assert conn.execute("SELECT count(*) FROM docs").fetchone()[0] == 1


# -- plan files edited by hand ---------------------------------------------------------------------

EDITS = [
    ('shadow = "embedding__gemini_embedding_001"', 'shadow = "x\\"; DROP TABLE docs; --"', "column.shadow is"),
    ('name = "docs"', 'name = "other"', "table.name is 'other'"),
    ('columns = [\n    "content",\n]', 'columns = [\n    "content",\n    "secret",\n]', "text.columns is"),
    ('dimensions = 768', 'dimensions = 3072', "target.dimensions is 3072"),
    ('model = "gemini:gemini-embedding-001"', 'model = "gemini:evil-model"', "target.model is"),
    ('shadow = "embedding__gemini_embedding_001"', 'shadow = ', "not valid TOML"),
    ('[column]', '[kolumn]', "plan is malformed"),
]


@pytest.mark.parametrize("old, new, message", EDITS, ids=[e[2] for e in EDITS])
def test_a_hand_edited_plan_file_is_refused_naming_the_difference(conn, run_cli, gemini, tmp_path,  # type: ignore[no-untyped-def]
                                                                  old: str, new: str, message: str) -> None:
    create_docs(conn, 20, index="hnsw")
    conn.execute("CREATE TABLE other (id bigint PRIMARY KEY, content text, secret text, embedding vector(768))")
    assert run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--name", "p1", "--offline",
                   "-o", "p1.toml").exit_code == 0
    path = tmp_path / "p1.toml"
    text = path.read_text()
    assert old in text, text
    path.write_text(text.replace(old, new, 1))
    before = conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attnum > 0 "
                          "AND NOT attisdropped").fetchone()[0]
    for command in (("run", "p1.toml", "--no-progress"), ("cutover", "p1.toml", "--force")):
        result = run_cli(*command)
        assert result.exit_code == 2, (command, result.output)
        assert message in result.stderr, result.stderr
        assert len(error_lines(result.stderr)) == 1
    assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attnum > 0 "
                        "AND NOT attisdropped").fetchone()[0] == before
    assert conn.execute("SELECT phase FROM reembed.plans WHERE name = 'p1'").fetchone()[0] == "planned"
    assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename IN ('docs', 'other')").fetchone()[0] == 2


# -- item 6 ---------------------------------------------------------------------------------------

def test_two_plans_on_one_column_at_once_one_is_refused(conn, run_cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 50, index="hnsw")
    procs = [reembed_process("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--offline", "--name",
                             f"race{i}", "-o", f"race{i}.toml", cwd=tmp_path) for i in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    assert "already has a live plan" in loser and len(error_lines(loser)) == 1, loser
    assert conn.execute("SELECT count(*) FROM reembed.plans").fetchone()[0] == 1
    record("6 plans", "two `reembed plan` on one column at the same instant", "one registered, the other exit 2",
           exit_codes=codes)


BEFORE_RUN = [
    ("ALTER TABLE docs ALTER COLUMN content TYPE varchar(2000)", "'content': 'character varying(2000)'"),
    ("ALTER TABLE docs DROP COLUMN title", "text column title is missing"),
    ("ALTER TABLE docs ALTER COLUMN embedding TYPE vector(769) USING NULL", "column embedding was vector(768), now vector(769)"),
]


@pytest.mark.parametrize("ddl, named", BEFORE_RUN, ids=["text type", "title dropped", "vector type"])
def test_a_table_changed_since_planning_is_refused_by_run(conn, run_cli, gemini, ddl: str, named: str) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 30, index=None)
    assert run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--title", "title", "--name", "p1",
                   "--offline").exit_code == 0
    conn.execute(ddl)
    before = _shape(conn)
    result = run_cli("run", "p1", "--no-progress")
    assert result.exit_code == 2, result.output
    assert "changed since plan 'p1' was made" in result.stderr and named in result.stderr, result.stderr
    assert _shape(conn) == before  # no shadow column, no trigger
    assert conn.execute("SELECT phase FROM reembed.plans WHERE name = 'p1'").fetchone()[0] == "planned"


def _shape(conn: psycopg.Connection) -> tuple:
    return conn.execute(
        "SELECT (SELECT array_agg(attname || ':' || format_type(atttypid, atttypmod) ORDER BY attnum) "
        "FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attnum > 0 AND NOT attisdropped), "
        "(SELECT count(*) FROM pg_trigger WHERE tgrelid = 'docs'::regclass AND NOT tgisinternal)").fetchone()


AFTER_INDEX = [
    # Once tracking is installed PostgreSQL itself refuses to retype or drop a tracked column (the
    # trigger depends on it); what it allows is a rename, or a change of the vector column.
    ("ALTER TABLE docs RENAME COLUMN title TO heading", "text column title is missing"),
    ("ALTER TABLE docs ALTER COLUMN embedding TYPE vector(769) USING NULL", "column embedding was vector(768), now vector(769)"),
]


@pytest.mark.parametrize("ddl, named", AFTER_INDEX, ids=["title renamed", "vector type"])
def test_a_table_changed_after_index_is_refused_by_cutover(conn, run_cli, gemini, ddl: str, named: str) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 30, index="hnsw")
    assert run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--title", "title", "--name", "p1",
                   "--offline").exit_code == 0
    assert run_cli("run", "p1", "--no-progress").exit_code == 0
    assert run_cli("index", "p1", "--no-progress").exit_code == 0
    conn.execute(ddl)
    before = _shape(conn)
    for command in (("cutover", "p1", "--force"), ("run", "p1", "--no-progress")):
        result = run_cli(*command)
        assert result.exit_code == 2, (command, result.output)
        assert "changed since plan 'p1' was made" in result.stderr and named in result.stderr, result.stderr
    assert _shape(conn) == before
    assert conn.execute("SELECT phase FROM reembed.plans WHERE name = 'p1'").fetchone()[0] == "indexed"


# -- secrets ---------------------------------------------------------------------------------------

PASSWORD = "Pw-Dsn-7hQx2LmV9s"


def test_no_password_or_api_key_in_any_output_log_plan_file_or_stored_row(conn, database, run_cli, gemini,  # type: ignore[no-untyped-def]
                                                                         monkeypatch, tmp_path) -> None:
    create_docs(conn, 80, index="hnsw")
    dsn = f"{database.dsn} password={PASSWORD}"  # trust authentication ignores it; reembed must hide it
    url = "postgresql://postgres:" + PASSWORD + "@/" + psycopg.conninfo.conninfo_to_dict(database.dsn)["dbname"] \
        + "?host=" + psycopg.conninfo.conninfo_to_dict(database.dsn)["host"]
    monkeypatch.setenv("DATABASE_URL", dsn)
    outputs: dict[str, str] = {}
    commands = [
        ("inspect", "docs"), ("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--title", "title",
                              "--name", "p1", "-o", "p1.toml", "--sql"),
        ("plans", "--json"), ("run", "p1"), ("status", "p1", "--json"), ("index", "p1"),
        ("verify", "p1", "--no-source", "--json"), ("cutover", "p1"), ("rollback", "p1", "--json"),
        ("verify", "p1", "--no-source"), ("cutover", "p1", "--json"), ("embed-query", "hello", "--plan", "p1"),
        ("cleanup", "p1", "--yes"),
        ("cutover", "p1"),  # an error: refused after cleanup
        ("status", "nope"),  # an error: unknown plan
    ]
    for i, command in enumerate(commands):
        extra = ("--dsn", url) if i % 2 else ()  # both DSN forms, by flag and by environment
        result = run_cli("--verbose", *command, *extra)
        outputs[f"{' '.join(command)} (exit {result.exit_code})"] = result.stdout + result.stderr
    codes = [int(re.search(r"exit (\d+)", k).group(1)) for k in outputs]  # type: ignore[union-attr]
    assert codes[:13] == [0] * 13 and codes[13] != 0 and codes[14] != 0, outputs
    # A subprocess too, as a user runs it, with an unreachable host in the DSN (the error names the DSN).
    proc = subprocess.run(["python", "-m", "toolkit", "--verbose", "status", "--dsn",
                           f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/x"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 3
    outputs["unreachable (subprocess)"] = proc.stdout + proc.stderr
    assert "cannot connect to 127.0.0.1:1/x" in outputs["unreachable (subprocess)"]  # named, without the password
    stored = {}
    for (name,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'reembed'").fetchall():
        stored[f"reembed.{name}"] = "\n".join(r[0] for r in conn.execute(
            sql.SQL("SELECT row_to_json(t)::text FROM {} AS t").format(sql.Identifier("reembed", name))))
    stored["comments"] = "\n".join(r[0] or "" for r in conn.execute(
        "SELECT description FROM pg_description"))
    stored["functions"] = "\n".join(r[0] or "" for r in conn.execute(
        "SELECT prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"))
    files = {str(p.name): p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()}
    bodies = {"emulator requests": json.dumps(list(gemini.app.bodies))}
    leaks = scan_for([PASSWORD, API_KEY], {**outputs, **stored, **files, **bodies})
    assert leaks == [], leaks
    assert any("p1.toml" in name for name in files)
    assert sum(len(v) for v in outputs.values()) > 2000  # --verbose really printed things
    record("5 hostile input", "DSN password (key=value and URL, flag and env) and API key; every command with "
           "--verbose, errors included", "neither appears in output, logs, plan file, reembed.* rows, comments",
           commands=len(outputs), bytes_scanned=sum(len(v) for d in (outputs, stored, files, bodies)
                                                     for v in d.values()), leaks=len(leaks))
