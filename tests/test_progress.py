"""Progress bars only on a terminal; elsewhere one plain line every few seconds, never `\\r`.
The index build reports pgvector's phase and tuples, not blocks."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

from backfill_support import gemini, make_plan  # noqa: F401 (fixture)
from tables import create_docs
from toolkit.progress import LineProgress, progress


def test_off_a_terminal_progress_is_whole_lines_at_an_interval() -> None:
    out = io.StringIO()
    bar = progress(100, desc="re-embedding", unit="rows", stream=out, every=3600)
    assert isinstance(bar, LineProgress)
    for _ in range(10):
        bar.update(10)
    assert out.getvalue() == ""  # nothing before the interval has passed
    bar.set_postfix(skipped=2)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and text.count("\n") == 1
    assert text.startswith("re-embedding: 100/100 rows (100%), ") and "rows/s, skipped=2" in text


def test_a_run_logs_lines_when_stderr_is_a_file_and_draws_a_bar_on_a_terminal(conn, run_cli, gemini,  # type: ignore[no-untyped-def]
                                                                              tmp_path: Path) -> None:
    create_docs(conn, 200, index=None)
    make_plan(run_cli)
    logged = subprocess.run([sys.executable, "-m", "toolkit", "run", "p1", "--batch-size", "20"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert logged.returncode == 0, logged.stderr
    assert "\r" not in logged.stderr
    assert "re-embedding: 200/200 rows (100%)" in logged.stderr
    conn.execute("UPDATE docs SET content = 'changed ' || id")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real terminal has a size
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "run", "p1", "--batch-size", "20"], cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    screen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal's other side closed: the process ended
            break
        if not chunk:
            break
        screen += chunk
    os.close(master)
    assert proc.wait(timeout=300) == 0
    assert b"\r" in screen and b"re-embedding" in screen  # tqdm redraws its bar in place


def test_index_progress_reports_tuples_and_the_phase_not_blocks(conn, run_cli, gemini, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 300, index="hnsw")
    make_plan(run_cli)
    assert run_cli("run", "p1", "--no-progress").exit_code == 0
    built = subprocess.run([sys.executable, "-m", "toolkit", "index", "p1"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    line = next(ln for ln in built.stderr.splitlines() if ln.startswith("index ") and "__docs_embedding_idx" in ln)
    assert " tuples" in line and "blocks" not in line and "\r" not in built.stderr
