"""What a plan will cost before it runs: rows, requests, tokens, time at the quota, money, disk."""

from __future__ import annotations

import math

import psycopg
from psycopg import sql

from toolkit.catalog import TableInfo
from toolkit.plan import Estimate, Plan
from toolkit.providers.base import ModelRef
from toolkit.providers.models import BATCH_DISCOUNT, BATCH_JOB_ROWS, model_info
from toolkit.providers.tokens import estimate_tokens

FREE_TIER_RPM = 100  # the free tier counts every text as one request
FREE_TIER_TPM = 30_000
FREE_TIER_RPD = 1_000  # per day, reset at midnight Pacific time
SAMPLE_ROWS = 1000
EXACT_COUNT_BELOW = 2_000_000  # above this, counting would scan a big table: scale the sample instead


def estimate(conn: psycopg.Connection, plan: Plan, info: TableInfo, *, rpm: int | None = None,
             tpm: int | None = None, rpd: int | None = None) -> Estimate:
    """With no quota given, the free tier's (including its daily cap); a quota given without --rpd
    assumes no daily cap (paid tiers' are far above a migration's needs)."""
    if rpd is None and rpm is None and tpm is None:
        rpd = FREE_TIER_RPD
    rpm = rpm or FREE_TIER_RPM
    tpm = tpm or FREE_TIER_TPM
    target = ModelRef.parse(plan.target)
    limits = model_info(target).limits
    text, title = plan.text_expression(), plan.title_expression()
    if info.rows_estimate < EXACT_COUNT_BELOW:
        total, empty = conn.execute(sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE coalesce(btrim({}), '') = '') FROM {}").format(
            text, plan.table)).fetchone()  # type: ignore[misc]
    else:
        total, empty = info.rows_estimate, 0
    # Bernoulli sampling reads the whole table but keeps the sample spread over it.
    percent = min(100.0, 100.0 * 2 * SAMPLE_ROWS / max(int(total), 1))
    sample = conn.execute(sql.SQL("SELECT {}, {} FROM {} TABLESAMPLE BERNOULLI ({}) LIMIT {}").format(
        text, title, plan.table, sql.Literal(percent), sql.Literal(SAMPLE_ROWS))).fetchall()
    sampled = [estimate_tokens(t or "") + estimate_tokens(h or "") for t, h in sample if t and t.strip()]
    per_row = min(sum(sampled) / len(sampled), limits.max_input_tokens) if sampled else 0.0
    to_embed = max(total - empty, 0)
    tokens = int(per_row * to_embed)
    minutes = max(to_embed / rpm, tokens / tpm) if to_embed else 0.0
    days = to_embed / rpd if rpd and to_embed > rpd else 0.0  # binds once the run outlasts one quota day
    cost = tokens / 1e6 * model_info(target).usd_per_million_tokens
    batch_jobs = math.ceil(to_embed / BATCH_JOB_ROWS) if target.provider == "gemini" else 0
    from toolkit.strategies import strategy_for

    data_bytes, index_bytes = strategy_for(plan).disk_bytes(plan, int(total), info)
    return Estimate(
        rows_total=int(total), rows_to_embed=int(to_embed), rows_empty=int(empty),
        http_requests=math.ceil(to_embed / limits.max_texts_per_request), quota_requests=int(to_embed),
        tokens=tokens, rpm=rpm, tpm=tpm, minutes_at_quota=round(minutes, 1),
        cost_usd=round(cost, 4), rpd=int(rpd or 0), days_at_quota=round(days, 2),
        batch_cost_usd=round(cost * BATCH_DISCOUNT, 4), batch_jobs=batch_jobs,
        shadow_column_bytes=data_bytes,
        shadow_index_bytes=index_bytes,
    )
