"""`reembed demo`: the whole lifecycle on a real corpus, offline by default."""

from __future__ import annotations

import click

from toolkit.cli.common import cli, dsn_option, handle_errors


@cli.command()
@click.option("--rows", type=click.IntRange(50, 5000), default=None,
              help="Passages to load (real text shipped with Python). Default: 2500; 200 when the real Gemini "
                   "API is used (its free tier takes 100 texts a minute).")
@click.option("--emulators", "force_emulators", is_flag=True,
              help="Use the local Gemini and Ollama emulators even when an API key or a real Ollama is there.")
@click.option("--query", default=None, metavar="TEXT", help="The example question asked before and after cutover.")
@click.option("--table-only", is_flag=True,
              help="Build and fill the demo table, then stop: a table to practise the real job on, step by step "
                   "(the demo prints the commands).")
@dsn_option
@handle_errors
def demo(rows: int | None, force_emulators: bool, query: str | None, table_only: bool, dsn: str | None) -> None:
    """Show the whole lifecycle on a small RAG store, with nothing to set up.

    \b
    Creates schema reembed_demo with a table `passages` (id, title, content,
    embedding vector(768) + an HNSW cosine index) of real text that ships with
    Python, embedded by Ollama nomic-embed-text; then runs
      inspect -> plan -> run -> index -> verify -> cutover
    to Gemini gemini-embedding-001, and asks the same SQL before and after.

    \b
    No database given: the embedded PostgreSQL. No GOOGLE_API_KEY / GEMINI_API_KEY:
    the Gemini emulator. No Ollama with nomic-embed-text at OLLAMA_HOST: the Ollama
    emulator. The demo says which parts were emulated. Running it again drops and
    recreates its own schema and plan, and touches nothing else.
    """
    from toolkit.demo import DemoOptions, run_demo
    from toolkit.demo.run import DEFAULT_QUERY

    run_demo(DemoOptions(dsn=dsn, rows=rows, force_emulators=force_emulators, query=query or DEFAULT_QUERY,
                         table_only=table_only))
