"""Start `reembed` commands as real processes in milliseconds, for tests that start hundreds and
kill them with SIGKILL at random moments (tests/test_interleavings.py).

`python -m toolkit` spends a second or more of CPU importing the CLI, the SDKs and numpy before
it does anything (several seconds on a loaded 2-core machine), which would dominate a test that
runs a few hundred commands. This server imports the CLI once, single-threaded and with no
connection open, then forks one child per request: each child is its own process running the
real entry point (`toolkit.cli.cli`, what the `reembed` script runs) with its own argv,
environment, stdout and stderr, and can be killed like any other. The server reaps its children
and writes each exit status next to its output (`<out>.rc`: the exit code, or -N for signal N).

Protocol on stdin/stdout, one JSON object per line:
  request  {"argv": [...], "env": {...}, "cwd": "...", "out": "/path/prefix"}
  answer   {"pid": 1234}
"""

from __future__ import annotations

import json
import os
import select
import sys


def _child(request: dict) -> None:
    out = request["out"]
    stdout = os.open(out + ".stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    stderr = os.open(out + ".stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.environ.clear()
    os.environ.update(request["env"])
    if request.get("cwd"):
        os.chdir(request["cwd"])
    code = 1
    try:
        from toolkit.cli import cli

        cli.main(args=request["argv"], prog_name="reembed", standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a crash of the command is its exit status
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _reap(children: dict[int, str]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        out = children.pop(pid, None)
        if out is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        with open(out + ".rc.tmp", "w") as f:
            f.write(str(code))
        os.replace(out + ".rc.tmp", out + ".rc")


def main() -> None:
    import toolkit.cli  # noqa: F401 - the whole CLI, its commands and their imports, once
    import toolkit.phases.backfill  # noqa: F401
    import toolkit.providers.gemini  # noqa: F401
    import toolkit.providers.ollama  # noqa: F401

    children: dict[int, str] = {}
    stdin = sys.stdin.buffer
    buffer = b""
    print(json.dumps({"ready": os.getpid()}), flush=True)
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.05)
        _reap(children)
        if not ready:
            continue
        chunk = os.read(stdin.fileno(), 65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _child(request)
            children[pid] = request["out"]
            print(json.dumps({"pid": pid}), flush=True)
    while children:
        _reap(children)
        select.select([], [], [], 0.05)


if __name__ == "__main__":
    main()
