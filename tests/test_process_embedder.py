"""ProcessEmbedder: the real google-genai client in a child process, over HTTP to the Gemini
emulator, answering exactly what the client answers in-process; its failures arrive as the same
exceptions, and the child never outlives the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from toolkit.errors import BadInput, DailyQuotaExhausted, MalformedResponse, ProviderUnreachable
from toolkit.providers import make_embedder
from toolkit.providers.base import ModelRef
from toolkit.providers.process import ProcessEmbedder
from toolkit.providers.settings import ProviderSettings

G1 = ModelRef.parse("gemini:gemini-embedding-001")
TEXTS = [f"passage {i} about bread, bicycles and the roman empire" for i in range(40)]
TITLES = [f"title {i % 3}" if i % 2 else None for i in range(40)]


def _gone(pid: int, within: float = 60.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie (exited, not yet reaped by its parent) is gone for our purpose.
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def remote(provider_settings: ProviderSettings):  # type: ignore[no-untyped-def]
    embedder = ProcessEmbedder(G1, 768, provider_settings)
    try:
        yield embedder
    finally:
        embedder.close()


def test_answers_are_the_in_process_clients_answers(remote, provider_settings, gemini_emulator) -> None:  # type: ignore[no-untyped-def]
    here = make_embedder(G1, 768, provider_settings)
    try:
        assert (remote.ref, remote.dimensions, remote.limits) == (here.ref, here.dimensions, here.limits)
        for start in range(0, 40, 10):
            ours = remote.embed_documents(TEXTS[start:start + 10], TITLES[start:start + 10])
            theirs = here.embed_documents(TEXTS[start:start + 10], TITLES[start:start + 10])
            assert ours.index == theirs.index and ours.skipped == theirs.skipped
            np.testing.assert_array_equal(ours.vectors, theirs.vectors)
        np.testing.assert_array_equal(remote.embed_queries(TEXTS[:5]).vectors, here.embed_queries(TEXTS[:5]).vectors)
    finally:
        here.close()


def test_concurrent_calls_each_get_their_own_answer(remote, provider_settings, gemini_emulator) -> None:  # type: ignore[no-untyped-def]
    here = make_embedder(G1, 768, provider_settings)
    try:
        batches = [TEXTS[i:i + 5] for i in range(0, 40, 5)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(remote.embed_documents, batches))
        for batch, answer in zip(batches, answers):
            np.testing.assert_array_equal(answer.vectors, here.embed_documents(batch).vectors)
        assert gemini_emulator.stats.embed_requests == 2 * len(batches)
    finally:
        here.close()
    remote.close()
    assert remote._process.exitcode == 0  # it left when told to, rather than being killed after a wait


def test_a_providers_failure_arrives_as_the_same_exception(remote, gemini_emulator) -> None:  # type: ignore[no-untyped-def]
    gemini_emulator.configure(script=["nan"])
    with pytest.raises(MalformedResponse):
        remote.embed_documents(TEXTS[:3])
    assert remote.embed_documents(TEXTS[:3]).index == [0, 1, 2]  # the child carries on


def test_a_per_day_quota_stops_with_its_own_exception(provider_env, gemini_emulator) -> None:  # type: ignore[no-untyped-def]
    gemini_emulator.configure(quota_texts_per_day=3)
    embedder = ProcessEmbedder(G1, 768, ProviderSettings.from_env(timeout=60.0, max_attempts=3))
    try:
        embedder.embed_documents(TEXTS[:3])
        with pytest.raises(DailyQuotaExhausted, match="daily quota for gemini-embedding-001 is used up"):
            embedder.embed_documents(TEXTS[3:6])
    finally:
        embedder.close()


def test_an_unknown_model_is_refused_before_any_process_starts(provider_settings) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadInput, match="no-such-model"):
        ProcessEmbedder(ModelRef.parse("gemini:no-such-model"), 768, provider_settings)


def test_nothing_to_embed_starts_no_process_and_a_refusal_in_the_child_reaches_the_caller(
        provider_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    quiet = ProcessEmbedder(G1, 768, ProviderSettings.from_env())
    quiet.close()
    assert quiet._process is None
    monkeypatch.delenv("GOOGLE_API_KEY")  # the client in the child finds no key
    keyless = ProcessEmbedder(G1, 768, ProviderSettings.from_env())
    try:
        for _ in range(2):  # every call, as with a client that could not be built
            with pytest.raises(BadInput, match="no Gemini API key: set GOOGLE_API_KEY"):
                keyless.embed_documents(TEXTS[:1])
    finally:
        keyless.close()


def test_start_begins_the_child_without_waiting_and_ready_waits_for_it(provider_env, gemini_emulator) -> None:  # type: ignore[no-untyped-def]
    embedder = ProcessEmbedder(G1, 768, ProviderSettings.from_env())
    try:
        embedder.start()
        child = embedder._process.pid
        assert not embedder._ready  # not waited for: the caller goes on with its setup
        embedder.start()  # once begun, a no-op
        assert embedder._process.pid == child
        assert embedder.ready() > 0 and embedder._ready
        assert embedder.ready() == 0.0  # ready already
        assert len(embedder.embed_documents(TEXTS[:5]).index) == 5 and embedder._process.pid == child
    finally:
        embedder.close()
    # Closed while the child was still starting: it ends all the same.
    abandoned = ProcessEmbedder(G1, 768, ProviderSettings.from_env())
    abandoned.start()
    child = abandoned._process.pid
    abandoned.close()
    assert _gone(child), "a child closed while starting outlived the close"
    with pytest.raises(ProviderUnreachable, match="closed"):
        abandoned.embed_documents(TEXTS[:1])


def test_a_refusal_while_starting_reaches_ready(provider_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("GOOGLE_API_KEY")
    keyless = ProcessEmbedder(G1, 768, ProviderSettings.from_env())
    try:
        keyless.start()
        with pytest.raises(BadInput, match="no Gemini API key: set GOOGLE_API_KEY"):
            keyless.ready()
        with pytest.raises(BadInput, match="no Gemini API key"):
            keyless.embed_documents(TEXTS[:1])
    finally:
        keyless.close()


def test_a_child_killed_fails_the_calls_instead_of_hanging(remote, gemini_emulator) -> None:  # type: ignore[no-untyped-def]
    gemini_emulator.configure(latency=30.0)
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(remote.embed_documents, TEXTS[:3])
        deadline = time.monotonic() + 60
        while gemini_emulator.stats.embed_requests == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(remote._process.pid, signal.SIGKILL)
        with pytest.raises(ProviderUnreachable, match="embedding process ended with a call in flight"):
            waiting.result(timeout=60)
    with pytest.raises(ProviderUnreachable, match="embedding process ended with a call in flight"):
        remote.embed_documents(TEXTS[:3])  # later calls say why, too
    remote.close()  # nothing left to stop: returns


def test_the_child_ignores_a_terminals_signals_and_ends_with_its_parent(provider_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = textwrap.dedent("""
        import os, sys, time
        from toolkit.providers.base import ModelRef
        from toolkit.providers.process import ProcessEmbedder
        from toolkit.providers.settings import ProviderSettings
        e = ProcessEmbedder(ModelRef.parse("gemini:gemini-embedding-001"), 768, ProviderSettings.from_env())
        e.embed_documents(["starts the child"])
        print(e._process.pid, flush=True)
        sys.stdin.readline()
        print(len(e.embed_documents(["after the signals"]).index), flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=os.environ.copy())
    try:
        assert parent.stdout is not None and parent.stdin is not None
        child = int(parent.stdout.readline())
        # Ctrl-C reaches the whole process group: the child leaves stopping to its parent.
        os.kill(child, signal.SIGINT)
        os.kill(child, signal.SIGTERM)
        parent.stdin.write("\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "1"
        parent.kill()  # kill -9: no clean-up code of the parent runs
        parent.wait(timeout=60)
        assert _gone(child), "the embedding process outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_where_no_child_can_start_the_client_runs_here(provider_env) -> None:  # type: ignore[no-untyped-def]
    # A main module read from standard input cannot be re-imported by a spawned child.
    script = textwrap.dedent("""
        from toolkit.providers.base import ModelRef
        from toolkit.providers.process import ProcessEmbedder
        from toolkit.providers.settings import ProviderSettings
        e = ProcessEmbedder(ModelRef.parse("gemini:gemini-embedding-001"), 768, ProviderSettings.from_env())
        print(len(e.embed_documents(["one", "two"]).index), len(e.embed_queries(["three"]).index), e._process)
        e.close()
    """)
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=300,
                          env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "1", "None"]
    assert "embedding in this process instead" in done.stderr
