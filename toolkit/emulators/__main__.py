"""`python -m toolkit.emulators gemini|ollama --port N [faults]`: serve until killed."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from toolkit.emulators import start_gemini, start_ollama


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.emulators", description=__doc__)
    parser.add_argument("api", choices=("gemini", "ollama"))
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--quota-texts-per-minute", type=int, help="beyond it: 429 with RetryInfo (Ollama: 503)")
    parser.add_argument("--quota-tokens-per-minute", type=int)
    parser.add_argument("--quota-window", type=float, default=60.0, help="seconds of the quota window")
    parser.add_argument("--retry-delay", type=float, help="retryDelay to report (default: when the window has room)")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered 5xx")
    parser.add_argument("--error-status", type=int, default=503)
    parser.add_argument("--malformed-rate", type=float, default=0.0)
    parser.add_argument("--malformed-kind", default="mixed", choices=("count", "dimension", "nan", "zero", "mixed"))
    parser.add_argument("--reset-rate", type=float, default=0.0, help="share of connections reset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", action="append", dest="api_keys",
                        help="Gemini: accepted key (repeatable; default: any key)")
    parser.add_argument("--model", action="append", dest="models", help="Ollama: served model (repeatable)")
    args = parser.parse_args(argv)

    faults = dict(latency=args.latency, quota_texts_per_minute=args.quota_texts_per_minute,
                  quota_tokens_per_minute=args.quota_tokens_per_minute, quota_window=args.quota_window,
                  retry_delay=args.retry_delay, error_rate=args.error_rate, error_status=args.error_status,
                  malformed_rate=args.malformed_rate, malformed_kind=args.malformed_kind,
                  reset_rate=args.reset_rate, seed=args.seed)
    if args.api == "gemini":
        server = start_gemini(args.port, api_keys=args.api_keys, **faults)
    else:
        server = start_ollama(args.port, models=tuple(args.models or ("nomic-embed-text",)), **faults)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(server.base_url, flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
