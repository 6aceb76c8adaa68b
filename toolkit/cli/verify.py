"""`reembed verify`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from toolkit.cli.common import EXIT_GATE, EXIT_OK, cli, connected, dsn_option, echo_json, handle_errors, json_option
from toolkit.cli.options import provider_options
from toolkit.phases.verification.options import VerifyOptions
from toolkit.phases.verification.queries import read_queries
from toolkit.phases.verification.report import verify_report
from toolkit.phases.verify import run_verify
from toolkit.plan import load

_D = VerifyOptions()
UNIT = click.FloatRange(0, 1)


@cli.command()
@click.argument("plan")
@click.option("--queries", "queries_file", type=click.Path(dir_okay=False, path_type=Path),
              help='JSONL, one {"query": "...", "relevant": [ids]} per line (relevant optional). '
                   "Default: queries made from sampled rows' own text.")
@click.option("--sample", type=click.IntRange(1, 100_000), default=_D.sample, show_default=True,
              help="Rows sampled (fixed seed) for ANN recall, re-embedding, self-retrieval and agreement.")
@click.option("--k", "k", type=click.IntRange(1, 1000), default=_D.k, show_default=True, help="Top-k for recall and agreement.")
@click.option("--no-source", is_flag=True,
              help="Do not compare with the old model (use when it is no longer reachable).")
@click.option("--min-recall", type=UNIT, default=_D.min_recall, show_default=True,
              help="ann_recall: least recall@k of the index scan against an exact scan.")
@click.option("--recall-margin", type=UNIT, default=_D.recall_margin, show_default=True,
              help="ann_recall: also passes at the original index's recall on the same queries and settings, "
                   "less this.")
@click.option("--ef-search", type=click.IntRange(1, 1000), help="ann_recall: hnsw.ef_search to measure at (default: the session's).")
@click.option("--probes", type=click.IntRange(1, 32768), help="ann_recall: ivfflat.probes to measure at (default: the session's).")
@click.option("--norm-tolerance", type=click.FloatRange(min=0), default=_D.norm_tolerance, show_default=True,
              help="sanity: largest |norm - 1| accepted.")
@click.option("--max-duplicates", type=click.IntRange(min=0), default=_D.max_duplicates, show_default=True,
              help="sanity: rows allowed to share a vector with a different text.")
@click.option("--max-pending", type=click.IntRange(min=0), default=None,
              help="freshness: rows changed by the application and queued for re-embedding that may remain "
                   "(default: what the write rate measured during verify explains; at least 0.1% of rows, 20).")
@click.option("--outlier-sigmas", type=click.FloatRange(min=0), default=_D.outlier_sigmas, show_default=True,
              help="outliers: a vector whose cosine to the corpus centroid is below SIGMAS/sqrt(dims) looks "
                   "random (0 disables).")
@click.option("--max-outliers", type=click.IntRange(min=0), default=_D.max_outliers, show_default=True,
              help="outliers: vectors allowed to look random.")
@click.option("--fidelity-cosine", type=UNIT, default=_D.fidelity_cosine, show_default=True,
              help="fidelity: cosine at which a re-embedded row matches its stored vector.")
@click.option("--min-fidelity", type=UNIT, default=_D.min_fidelity, show_default=True,
              help="fidelity: fraction of sampled rows that must match.")
@click.option("--min-self-retrieval", type=UNIT, default=_D.min_self_retrieval, show_default=True,
              help="self_retrieval: fraction of sampled rows their own text must find in the new top-k "
                   "(or, once fidelity passed, the original column's own rate minus --margin).")
@click.option("--margin", type=UNIT, default=_D.margin, show_default=True,
              help="agreement and self_retrieval: how far the new model may trail the old one.")
@click.option("--min-overlap", type=UNIT, default=_D.min_overlap, show_default=True,
              help="agreement: least mean overlap@k of old and new top-k (0: report only).")
@provider_options
@dsn_option
@json_option
@handle_errors
def verify(plan: str, queries_file: Path | None, sample: int, k: int, no_source: bool, min_recall: float,
           recall_margin: float, ef_search: int | None, probes: int | None, norm_tolerance: float, max_duplicates: int,
           max_pending: int | None, outlier_sigmas: float, max_outliers: int, fidelity_cosine: float, min_fidelity: float,
           min_self_retrieval: float, margin: float, min_overlap: float, dsn: str | None, as_json: bool) -> None:
    """Say, with evidence, whether PLAN's new vectors are ready to replace the old ones.

    \b
    Read-only on your table. Checks, each with a value, a threshold and a verdict:
      coverage        every row with text has a new vector (skipped rows listed with reasons)
      freshness       no vector was computed from text other than the row's current text/title
      sanity          planned dimension, finite, unit norm; no vector shared by different texts
      outliers        no vector looks random next to the corpus (checked over ALL rows), beyond
                      what the original column shows on the same rows
      index           the new index exists, is valid, serves the retrieval operator and is used
      ann_recall      recall@k of the index scan against an exact scan, and the original
                      index's on the same queries and settings (the baseline)
      fidelity        sampled rows re-embedded now match their stored vectors
      self_retrieval  a query made from a sampled row's text finds that row, or does no worse
                      than the source model on the original column (once fidelity passed)
      agreement       old model vs new model top-k: overlap@k; recall@k and MRR side by side

    The verdict is stored; cutover requires a passing verification of the current state.
    Providers: the key from GOOGLE_API_KEY (or GEMINI_API_KEY); --gemini-base-url,
    --ollama-host, --timeout (or their variables). Exit 0 when every check passes, 1 otherwise.
    """
    options = VerifyOptions(
        sample=sample, k=k, queries=read_queries(queries_file) if queries_file else None, no_source=no_source,
        min_recall=min_recall, recall_margin=recall_margin, ef_search=ef_search, probes=probes, norm_tolerance=norm_tolerance,
        max_duplicates=max_duplicates, max_pending=max_pending, outlier_sigmas=outlier_sigmas, max_outliers=max_outliers,
        fidelity_cosine=fidelity_cosine, min_fidelity=min_fidelity, min_self_retrieval=min_self_retrieval,
        margin=margin, min_overlap=min_overlap, progress=not as_json)
    with connected(dsn) as (db, conn):
        the_plan, record = load(conn, plan)
        result = run_verify(db, conn, the_plan, record, options)
    data = result.to_json()
    echo_json(data, plan=data["plan"], phase=data["phase"]) if as_json else click.echo(verify_report(data))
    sys.exit(EXIT_OK if result.passed else EXIT_GATE)
