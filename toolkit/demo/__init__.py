"""`reembed demo`: the whole lifecycle on a real corpus, offline, on the embedded PostgreSQL.

corpus    passages of real text that ships with Python (nothing downloaded)
store     the demo's own schema and RAG table, filled by the source model
providers real services when present, local emulators otherwise (said plainly)
query     query vectors for a plan's models; the application's retrieval SQL
narrate   numbered steps, commands, timings
run       the orchestration: build the store, run the real commands, summarize
"""

from toolkit.demo.run import DEFAULT_ROWS, PLAN_NAME, DemoOptions, DemoResult, run_demo

__all__ = ["DEFAULT_ROWS", "PLAN_NAME", "DemoOptions", "DemoResult", "run_demo"]
