"""CPU time of our Gemini provider path per 100-text call (real google-genai client, real HTTP).

The emulator runs in another process with its answers warmed first, so only the client's CPU
(request building, the SDK's validation, JSON decoding, our checks and normalisation) is counted.
Run: python bench/provider_cpu.py [--calls 200] [--titles] [--model gemini-embedding-001]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from toolkit.providers import make_embedder
from toolkit.providers.base import ModelRef
from toolkit.providers.settings import ProviderSettings
from toolkit.ratelimit import RateLimiter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--titles", action="store_true", help="every row has its own title")
    parser.add_argument("--model", default="gemini-embedding-001")
    parser.add_argument("--dims", type=int, default=768)
    args = parser.parse_args()
    port = 18000 + os.getpid() % 1000
    server = subprocess.Popen([sys.executable, "-m", "toolkit", "emulator", "gemini", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2.0)
        settings = ProviderSettings.from_env(gemini_api_key="bench", gemini_base_url=f"http://127.0.0.1:{port}")
        embedder = make_embedder(ModelRef("gemini", args.model), args.dims, settings, limiter=RateLimiter())
        texts = [f"passage {i}: the quick brown fox jumps over the lazy dog number {i % 97}" for i in range(100)]
        titles = [f"title {i}" for i in range(100)] if args.titles else None
        for _ in range(5):  # warm the emulator's answers and the client's connection
            embedder.embed_documents(texts, titles)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(args.calls):
            embedder.embed_documents(texts, titles)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"{args.model} dims={args.dims} titles={args.titles}: {1000 * cpu / args.calls:.1f} ms CPU and "
              f"{1000 * wall / args.calls:.1f} ms wall per 100-text call ({args.calls} calls)")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
