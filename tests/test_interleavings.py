"""Randomized interleavings of `run`, `run --follow`, `run --rollback-fill`, `index`, `cutover`,
`rollback`, `cleanup` and `abandon` (issue 11, "Must show"), for both strategies.

Each seed plays one migration of a small table while the application (tests/interleaving_app.py,
a second process) inserts rows, changes texts and titles, updates another column and deletes
rows. Commands are real processes (tests/command_forker.py starts them in milliseconds),
started at random moments, some waited for, some left running beside the next one, some killed
with SIGKILL after a random delay. Then the application stops, the commands still running end,
and the sequence settles: the commands that complete the migration (run, index, cutover,
cleanup) or its rollback (rollback, run, run --rollback-fill, abandon) run to success. Checked:
- every row in the place that holds the target model's vectors (the source model's, after a
  rollback; both before the final drop) holds exactly that model's vector of the row's final
  text and title (none for blank text);
- no command that reported success left a row behind it: nothing pending after a successful
  run once the application stopped, nor after cleanup; nothing source-stale after a fill or
  abandon;
- the application never saw an error, and no command failed with a database error (a lost
  race shows up as one: a statement by names that moved, a deadlock).
A failure prints the seed and the commands played; replay one with
REEMBED_INTERLEAVING_SEED=<seed> [REEMBED_INTERLEAVING_STRATEGY=copy] pytest tests/test_interleavings.py.
The default run plays 20 seeds; `pytest -m soak tests/test_interleavings.py` plays
REEMBED_SOAK_SEEDS (300) more.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from reliability_support import TESTS, wait_for, wrong_vectors
from tables import create_docs
from toolkit.emulators import expected_vectors
from toolkit.strategies import STRATEGIES

PLAN = "p1"
ROWS = 150
DEFAULT_SEEDS = 20
SOAK_SEEDS = int(os.environ.get("REEMBED_SOAK_SEEDS", "300"))
COMMAND_TIMEOUT = 240.0  # a bound on a loaded machine, not a speed expectation


def _cases(seeds: range) -> list[tuple[int, str]]:
    replay = os.environ.get("REEMBED_INTERLEAVING_SEED")
    if replay:
        seed = int(replay)
        return [(seed, os.environ.get("REEMBED_INTERLEAVING_STRATEGY", STRATEGIES[seed % len(STRATEGIES)]))]
    return [(seed, STRATEGIES[seed % len(STRATEGIES)]) for seed in seeds]


# -- commands as processes ------------------------------------------------------------------------

class Forker:
    """tests/command_forker.py: one server for the session, one forked process per command."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0
        self.proc = subprocess.Popen([sys.executable, str(TESTS / "command_forker.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=TESTS.parent)
        ready = json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]
        assert "ready" in ready, ready

    def start(self, argv: list[str], env: dict[str, str], cwd: Path) -> "Command":
        self.count += 1
        out = str(self.workdir / f"cmd{self.count}")
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "cwd": str(cwd), "out": out}) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        pid = json.loads(self.proc.stdout.readline())["pid"]  # type: ignore[union-attr]
        return Command(argv=argv, pid=pid, out=out)

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Command:
    argv: list[str]
    pid: int
    out: str
    started: float = field(default_factory=time.monotonic)
    killed: bool = False
    reported: bool = False

    @property
    def rc(self) -> int | None:
        try:
            return int(Path(self.out + ".rc").read_text())
        except (FileNotFoundError, ValueError):
            return None

    @property
    def running(self) -> bool:
        return self.rc is None

    def wait(self, timeout: float = COMMAND_TIMEOUT) -> int:
        wait_for(lambda: not self.running, timeout=timeout, step=0.02, what=f"`reembed {' '.join(self.argv)}` to end")
        return self.rc  # type: ignore[return-value]

    def signal(self, sig: int) -> None:
        if self.running:  # never signal a pid once its exit status is written: it may be reused
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill_9(self) -> None:
        if self.running:
            self.killed = True
            self.signal(signal.SIGKILL)
        self.wait()

    def stderr(self) -> str:
        return Path(self.out + ".stderr").read_text(errors="replace")

    def stdout(self) -> str:
        return Path(self.out + ".stdout").read_text(errors="replace")

    def describe(self) -> str:
        state = "killed" if self.killed else f"exit {self.rc}"
        tail = self.stderr().strip().splitlines()[-1:] if self.rc not in (0, None) and not self.killed else []
        return (f"reembed {' '.join(self.argv)} -> {state} after {time.monotonic() - self.started:.1f}s"
                + (f" ({tail[0][:200]})" if tail else ""))


@pytest.fixture(scope="session")
def forker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forker]:
    server = Forker(tmp_path_factory.mktemp("commands"))
    try:
        yield server
    finally:
        server.close()


# -- one seed -------------------------------------------------------------------------------------

# (weight, argv without the plan) of the commands a sequence draws from.
MENU: list[tuple[float, list[str]]] = [
    (3.0, ["run", "--concurrency", "2", "--no-progress"]),
    (0.8, ["run", "--follow", "--concurrency", "2", "--no-progress"]),
    (1.5, ["run", "--rollback-fill", "--no-progress"]),
    (1.0, ["index", "--no-progress"]),
    (2.0, ["cutover", "--force"]),
    (2.0, ["rollback"]),
    (0.6, ["cleanup"]),
    (0.6, ["abandon"]),
]
# Refusals a command may rightly answer in a random sequence (exit 1): anything else is a failure.
REFUSALS = ("cannot ", "is not complete", "moved to phase", "by another command", "nothing was", "refused",
            "no longer", "not prepared", "is cleaned_up", "is abandoned", "is missing or INVALID", "does not exist: run",
            "rows changed since cutover", "rows the application inserted", "could not take the lock")


def _refused(err: str) -> bool:
    """A command's stderr says it refused rightfully (the plan moved, nothing to do, ...)."""
    return any(r in err for r in REFUSALS)


class Interleaving:
    def __init__(self, seed: int, strategy: str, forker: Forker, conn: psycopg.Connection, run_cli,  # type: ignore[no-untyped-def]
                 dsn: str, tmp_path: Path, steps: tuple[int, int]) -> None:
        self.steps = steps  # how many random steps before the sequence settles (at least, at most)
        self.seed, self.strategy, self.forker, self.conn, self.run_cli = seed, strategy, forker, conn, run_cli
        self.dsn, self.tmp = dsn, tmp_path
        self.rng = random.Random(seed)
        self.log: list[str] = []
        self.commands: list[Command] = []
        self.app: subprocess.Popen | None = None

    # -- helpers ----------------------------------------------------------------------------------
    def fail(self, why: str) -> None:
        events = self.conn.execute("SELECT e.at, e.kind, e.phase, e.message FROM reembed.events e JOIN reembed.plans p "
                                   "ON p.id = e.plan_id WHERE p.name = %s AND e.kind <> 'batch' ORDER BY e.id",
                                   (PLAN,)).fetchall()
        trail = [f"{at:%H:%M:%S.%f} {kind} [{phase}] {message[:160]}" for at, kind, phase, message in events]
        pytest.fail(f"seed {self.seed} ({self.strategy}): {why}\n  replay: REEMBED_INTERLEAVING_SEED={self.seed} "
                    f"REEMBED_INTERLEAVING_STRATEGY={self.strategy} pytest tests/test_interleavings.py\n  "
                    + "\n  ".join(self.log) + "\n  events:\n    " + "\n    ".join(trail), pytrace=False)

    def start(self, argv: list[str]) -> Command:
        if argv[0] in ("run",) and "--follow" not in argv and "--rollback-fill" not in argv:
            argv = [*argv, "--batch-size", str(self.rng.choice([5, 10, 25]))]
        if argv[0] in ("cleanup", "abandon"):
            argv = [*argv, "--yes"]  # no terminal to ask on
        full = [argv[0], PLAN, *argv[1:]]
        command = self.forker.start(full, dict(os.environ), self.tmp)
        self.commands.append(command)
        return command

    def finish(self, command: Command, *, expect_success: bool = False) -> int:
        """Wait for `command`, log it, and fail on anything but success or a rightful refusal."""
        rc = command.wait()
        if command.reported:
            return rc
        command.reported = True
        self.log.append(command.describe())
        if rc not in (0, None) and not command.killed:
            err = command.stderr()
            if "database error" in err or "Traceback" in err or not _refused(err):
                self.fail(f"`reembed {' '.join(command.argv)}` failed: {err.strip()[-800:]}")
        if expect_success and rc != 0:
            self.fail(f"`reembed {' '.join(command.argv)}` was expected to succeed: {command.stderr().strip()[-800:]}")
        return rc

    def phase(self) -> str:
        return self.conn.execute("SELECT phase FROM reembed.plans WHERE name = %s", (PLAN,)).fetchone()[0]

    def counts(self) -> tuple[int, int]:
        row = self.conn.execute(
            "SELECT count(*) FILTER (WHERE l.state = 'pending'), count(*) FILTER (WHERE l.source_stale) "
            "FROM reembed.ledger l JOIN reembed.plans p ON p.id = l.plan_id WHERE p.name = %s", (PLAN,)).fetchone()
        return int(row[0]), int(row[1])

    def settle_with(self, argv: list[str]) -> None:
        command = self.start(argv)
        self.finish(command, expect_success=True)
        pending, stale = self.counts()
        if argv[0] == "run" and "--rollback-fill" not in argv and pending:
            self.fail(f"`reembed {' '.join(command.argv)}` succeeded with {pending} rows pending and no application")
        if "--rollback-fill" in argv and stale:
            self.fail(f"`reembed {' '.join(command.argv)}` succeeded with {stale} rows source-stale")

    def check(self, role: str, when: str) -> None:
        wrong = wrong_vectors(self.conn, PLAN, role)
        if wrong:
            model = "target" if role == "new" else "source"
            self.fail(f"{len(wrong)} rows hold no {model} vector of their final text {when}, e.g. {wrong[:5]}")

    # -- the play ---------------------------------------------------------------------------------
    def setup(self) -> None:
        create_docs(self.conn, ROWS, index="hnsw", vectors=lambda texts: expected_vectors(
            "ollama:nomic-embed-text", texts, task_type="RETRIEVAL_DOCUMENT", dimensions=768))
        self.conn.execute("ALTER TABLE docs ADD COLUMN views integer NOT NULL DEFAULT 0")
        strategy = ["--strategy", self.strategy]  # plan would recommend copy for both
        result = self.run_cli("plan", "docs", "--column", "embedding", "--text", "content", "--title", "title",
                              "--name", PLAN, "--offline", *strategy)
        assert result.exit_code == 0, result.output
        start = self.rng.choice(["planned", "indexed", "cut_over"])
        steps = {"planned": [], "indexed": [["run"], ["index"]], "cut_over": [["run"], ["index"], ["cutover", "--force"]]}
        for argv in steps[start]:
            self.finish(self.start(argv), expect_success=True)
        self.log.append(f"start: {start}")

    def start_app(self) -> None:
        out = self.tmp / "app.json"
        self.app = subprocess.Popen(
            [sys.executable, str(TESTS / "interleaving_app.py"), "--dsn", self.dsn, "--plan", PLAN, "--out", str(out),
             "--stop-file", str(out.with_suffix(".stop")), "--rows", str(ROWS), "--seed", str(self.seed),
             "--rate", str(self.rng.choice([20, 40, 80]))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=TESTS)
        wait_for(lambda: out.with_suffix(".ready").exists() or self.app.poll() is not None, timeout=120,  # type: ignore[union-attr]
                 what="the application to start")
        assert self.app.poll() is None, self.app.communicate()

    def stop_app(self) -> None:
        out = self.tmp / "app.json"
        out.with_suffix(".stop").touch()
        assert self.app is not None
        _, err = self.app.communicate(timeout=120)
        assert self.app.returncode == 0, err
        report = json.loads(out.read_text())
        self.log.append(f"application: {report['ops']}, vectors {report['vectors']}")
        if report["errors"]:
            self.fail(f"the application saw errors: {report['errors'][:5]}")

    def play(self) -> None:
        self.setup()
        self.start_app()
        try:
            for _ in range(self.rng.randint(*self.steps)):
                self.step()
        finally:
            self.stop_app()
        for command in self.commands:
            if command.running and "--follow" in command.argv:
                # A follower ends cleanly on SIGTERM, exit 0, once it runs (before, the signal's default
                # action ends the process, harmlessly: it has done nothing yet). One that another command's
                # step (abandon, cleanup) made refuse may have ended on its own before the signal arrived.
                time.sleep(max(0.0, command.started + 1.0 - time.monotonic()))
                command.signal(signal.SIGTERM)
                if command.wait() != 0 and not _refused(command.stderr()):
                    self.fail(f"`reembed {' '.join(command.argv)}` did not end cleanly on SIGTERM")
            self.finish(command)
        self.settle()

    def step(self) -> None:
        running = [c for c in self.commands if c.running]
        while len(running) >= 2:  # at most two commands at a time (besides the application)
            oldest = running.pop(0)
            if "--follow" in oldest.argv:
                oldest.kill_9()
            self.finish(oldest)
        if self.rng.random() < 0.3:
            self.race()
            return
        weights, menu = zip(*MENU)
        argv = list(self.rng.choices(menu, weights)[0])
        command = self.start(argv)
        mode = self.rng.choices(["wait", "kill", "overlap"], [0.45, 0.35, 0.2])[0]
        if mode == "wait" and "--follow" in argv:
            mode = "overlap"
        if mode == "wait":
            self.finish(command)
        elif mode == "kill":
            time.sleep(self.rng.uniform(0.0, 1.2))
            command.kill_9()
            self.finish(command)
        else:
            time.sleep(self.rng.uniform(0.0, 0.4))
            self.log.append(f"reembed {' '.join(command.argv)} -> left running")

    def race(self) -> None:
        """A writer and a command that moves or drops the vectors, started a moment apart, both to the end
        (or the writer killed): the races of issue 11.1."""
        for command in [c for c in self.commands if c.running]:
            if "--follow" in command.argv:
                command.kill_9()
            self.finish(command)
        writer = self.start(self.rng.choice([["run", "--concurrency", "2", "--no-progress"],
                                             ["run", "--rollback-fill", "--no-progress"]]))
        time.sleep(self.rng.uniform(0.05, 0.8))
        mover = self.start(self.rng.choice([["cutover", "--force"], ["rollback"], ["cutover", "--force"], ["rollback"],
                                            ["cleanup"], ["abandon"]]))
        self.log.append(f"race: {' '.join(writer.argv)} / {' '.join(mover.argv)}")
        if self.rng.random() < 0.3:
            time.sleep(self.rng.uniform(0.0, 1.0))
            writer.kill_9()
        self.finish(mover)
        self.finish(writer)

    def settle(self) -> None:
        phase = self.phase()
        self.log.append(f"settle from {phase}")
        if phase == "cut_over":
            goal = self.rng.choice(["complete", "roll back"])
        elif phase in ("cleaned_up", "abandoned"):
            goal = phase
        else:
            goal = self.rng.choice(["complete", "abandon"])
        if goal == "roll back":
            command = self.start(["rollback"])
            if self.finish(command) != 0:  # a killed cleanup may have dropped the old index already
                goal = "complete"
        if goal == "complete":
            if self.phase() != "cut_over":
                self.settle_with(["run"])
                self.settle_with(["index", "--no-progress"])
                self.settle_with(["cutover", "--force"])
            if self.rng.random() < 0.5:  # else cleanup must catch up on its own
                self.settle_with(["run"])
                self.settle_with(["run", "--rollback-fill", "--no-progress"])
                self.check("new", "in cut_over")
                self.check("old", "in cut_over (kept for a rollback)")
            self.settle_with(["cleanup"])
        elif goal in ("roll back", "abandon"):
            if self.rng.random() < 0.5:  # else abandon must fill on its own
                self.settle_with(["run"])
                self.settle_with(["run", "--rollback-fill", "--no-progress"])
                self.check("new", f"in {self.phase()}")
                self.check("old", f"in {self.phase()}")
            self.settle_with(["abandon"])
        phase = self.phase()
        pending, stale = self.counts()
        self.log.append(f"final: {phase}, {pending} pending, {stale} source-stale")
        if phase == "cleaned_up":
            self.check("new", "after cleanup")
            if pending:
                self.fail(f"cleanup succeeded and left {pending} rows pending")
        elif phase == "abandoned":
            self.check("old", "after abandon")
            if stale:
                self.fail(f"abandon succeeded and left {stale} rows without their source vector")
        else:
            self.fail(f"the sequence did not settle: phase {phase}")


def _play(seed: int, strategy: str, forker: Forker, conn, run_cli, database, tmp_path,  # type: ignore[no-untyped-def]
          steps: tuple[int, int]) -> None:
    started = time.monotonic()
    play = Interleaving(seed, strategy, forker, conn, run_cli, database.dsn, tmp_path, steps)
    play.play()
    print(f"[interleaving] seed {seed} ({strategy}): {len(play.commands)} commands, "
          f"{sum(c.killed for c in play.commands)} killed, {time.monotonic() - started:.1f}s\n  "
          + "\n  ".join(play.log))


@pytest.mark.parametrize(("seed", "strategy"), _cases(range(1, DEFAULT_SEEDS + 1)))
def test_random_interleavings(seed, strategy, forker, conn, run_cli, database, provider_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _play(seed, strategy, forker, conn, run_cli, database, tmp_path, steps=(3, 6))


@pytest.mark.soak
@pytest.mark.parametrize(("seed", "strategy"), _cases(range(1000, 1000 + SOAK_SEEDS)))
def test_random_interleavings_soak(seed, strategy, forker, conn, run_cli, database, provider_env,  # type: ignore[no-untyped-def]
                                   tmp_path) -> None:
    _play(seed, strategy, forker, conn, run_cli, database, tmp_path, steps=(4, 8))
