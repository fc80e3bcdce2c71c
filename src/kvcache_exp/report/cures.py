"""The summary's "Cures for a miss" section and ``cures_summary.csv``.

Numbers come from :mod:`kvcache_exp.analysis.cures`; this module only arranges them,
so that the Markdown, the HTML page and the CSV never disagree. The figure is in
:mod:`kvcache_exp.report.cures_plot`, so that building the summary does not import
matplotlib.
"""

from __future__ import annotations

import math
import os

import pandas as pd

from kvcache_exp.analysis import stats
from kvcache_exp.analysis.cure_names import HIT, MISS, config_label, cure_label, is_uncorrected
from kvcache_exp.analysis.cures import (
    EXACT_MAX_KL,
    EXACT_MIN_TOP1,
    RECOVER_MIN_SHARE,
    summarize_cures,
    verdicts_from_summary,
)
from kvcache_exp.analysis.formatting import num, with_ci
from kvcache_exp.analysis.load import verified_flags
from kvcache_exp.outputs import atomic_open
from kvcache_exp.report.document import Section, Table, VerdictItem

TITLE = "Cures for a miss"

NOT_MEASURED = (
    "The cures for a miss (shift, shift + recompute) were not measured in this run "
    "(`cures: false` in the configuration): the cures CSVs hold only their header."
)

WHAT = (
    "After A is removed, the prompt [S, B, Q] no longer matches the cached [S, A, B]. Each "
    "cure answers it from the same restored warm cache, and its TTFT is the wall time of its "
    "whole work: the cache operations, the evaluation and one sampled token. "
    "**hit**: the seed's hit, [S, A, B, Q] with only Q evaluated; it answers another prompt "
    "(with A), and is the fastest end. "
    "**miss**: B and Q evaluated again after S, which is what llama.cpp does on a prefix "
    "mismatch by default; it is the exact answer, and the slowest end. "
    "**shift**: drop A's cells and move B's cells back by |A| (llama.cpp re-rotates their RoPE "
    "keys), then evaluate only Q; this is what llama.cpp's server does with `--cache-reuse N` "
    "(and its context shift). B's states were computed with A before them, so the answer is "
    "no longer exact. "
    "**shift + recompute r**: as the shift, then evaluate the last r·|B| tokens of B again "
    "with Q, as CacheBlend and EPIC recompute a share of the reused tokens to win back quality."
)


def _how_to_read(n_resamples: int) -> str:
    return (
        "Share of the miss: median cure TTFT / median miss TTFT. Penalty recovered: "
        "(miss − cure) / (miss − hit) of the median TTFTs, 100% as fast as a hit, 0% as slow "
        "as a miss. Intervals: 95% percentile bootstrap "
        f"({n_resamples:,} resamples, fixed seed), the hit, the miss and the cure resampled "
        "independently. Quality compares the cure's next-token distributions over Q and a "
        "greedy continuation of the exact answer with the miss's: mean and 99th-percentile "
        "KL(exact ‖ cure) in nats, top-1 agreement, the RMS change in the probability of the "
        "exact answer's next token, and the first continuation position where greedy "
        "decoding diverges (the miss's own value means never). The hit answers another "
        "prompt, so it has no quality (n/a)."
    )


UNCORRECTED = (
    "**Uncorrected shift**: this model has absolute position embeddings "
    "(`position_correction` is none), so a shift cannot correct B's positions: its shift "
    "cures are labelled uncorrected, and their quality says nothing about a RoPE model's."
)

HEADER = [
    "Config (A/B)",
    "Cure",
    "n",
    "Tokens evaluated",
    "Median TTFT ms [95% CI]",
    "Share of miss TTFT [95% CI]",
    "Miss penalty recovered [95% CI]",
    "Mean KL (nats)",
    "p99 KL",
    "Top-1",
    "RMS Δp",
    "First divergence",
]


def _pct(row: pd.Series, name: str, by_definition: bool) -> str:
    """A share as a percentage with its interval, or marked as fixed by definition."""
    if by_definition and math.isfinite(float(row[name])):
        return f"{row[name] * 100:.0f}% (by definition)"
    low, high = row[f"{name}_ci_low"] * 100, row[f"{name}_ci_high"] * 100
    return with_ci(row[name] * 100, low, high, ".0f", "%")


def _table_row(row: pd.Series) -> list[str]:
    cure = str(row["cure"])
    return [
        config_label(row["keep_tokens"], row["size_a"], row["size_b"]),
        cure_label(cure, is_uncorrected(row["position_correction"])),
        str(int(row["n"])),
        num(row["tokens_evaluated"], ".0f"),
        with_ci(row["ttft_ms"], row["ttft_ci_low_ms"], row["ttft_ci_high_ms"], ".1f"),
        _pct(row, "share_of_miss", cure == MISS),
        _pct(row, "recovered", cure in (HIT, MISS)),
        num(row["kl_mean"], ".3g"),
        num(row["kl_p99"], ".3g"),
        num(row["top1_agreement"] * 100, ".1f", "%"),
        num(row["rms_dp"], ".3g"),
        num(row["first_divergence"], ".0f"),
    ]


def _noise_floor_line(summary: pd.DataFrame) -> str:
    """The noise floor of the quality comparison, per configuration."""
    floors = summary.drop_duplicates(["keep_tokens", "size_a", "size_b"])
    parts = [
        f"{config_label(r['keep_tokens'], r['size_a'], r['size_b'])}: mean KL "
        f"{num(r['floor_kl_mean'], '.3g')} nats, p99 KL {num(r['floor_kl_p99'], '.3g')}, "
        f"top-1 {num(r['floor_top1_agreement'] * 100, '.1f', '%')}, RMS Δp "
        f"{num(r['floor_rms_dp'], '.3g')}"
        for _, r in floors.iterrows()
    ]
    return (
        "Noise floor of the quality comparison (the exact answer against a second full "
        "recompute with another batch split; what any cure's figures are measured against): "
        + "; ".join(parts)
        + "."
    )


def _rules() -> str:
    return (
        "Verdicts, per cure: it *recovers most of the miss penalty* when, in every "
        f"configuration, the whole 95% CI of the penalty recovered lies above "
        f"{RECOVER_MIN_SHARE:.0%}; it *answers like a full recompute* when, in every "
        f"configuration, its top-1 agreement is at least {EXACT_MIN_TOP1:.0%} and its mean "
        f"KL at most {EXACT_MAX_KL:g} nats."
    )


def section(
    df: pd.DataFrame,
    *,
    summary: pd.DataFrame | None = None,
    n_resamples: int = stats.RESAMPLES,
    seed: int = stats.SEED,
) -> Section:
    """The "Cures for a miss" section from the cures rows ``df`` (:func:`load_cures`).

    Pass ``summary`` (:func:`summarize_cures` of ``df``) when it is already computed, so
    that the bootstrap runs once. A one-line section when the cures were not measured.
    """
    if summary is None:
        summary = summarize_cures(df, n_resamples=n_resamples, seed=seed)
    if summary.empty:
        return Section(TITLE, [NOT_MEASURED])
    blocks: list[str | Table | list[VerdictItem]] = [WHAT, _how_to_read(n_resamples)]
    if any(is_uncorrected(p) for p in summary["position_correction"]):
        blocks.append(UNCORRECTED)
    unverified = int(verified_flags(df["cache_verified"]).eq(False).sum()) if len(df) else 0
    if unverified:
        blocks.append(
            f"{unverified} cure trial(s) failed cache verification (`cache_verified` is "
            "False); they are left out of every number and verdict below."
        )
    blocks.append(Table(HEADER, [_table_row(r) for _, r in summary.iterrows()]))
    blocks.append(_noise_floor_line(summary))
    blocks.append(_rules())
    found = verdicts_from_summary(summary)
    blocks.append([VerdictItem(v.claim, v.status, v.reason) for v in found])
    return Section(TITLE, blocks)


def write_cures_summary(
    df: pd.DataFrame,
    out_csv: str | os.PathLike[str],
    *,
    summary: pd.DataFrame | None = None,
    n_resamples: int = stats.RESAMPLES,
    seed: int = stats.SEED,
) -> pd.DataFrame:
    """Write :func:`summarize_cures`'s table to ``out_csv`` atomically, and return it (so
    that the section and the figure can reuse it). Header only when there are no cures."""
    if summary is None:
        summary = summarize_cures(df, n_resamples=n_resamples, seed=seed)
    with atomic_open(out_csv, "w") as fh:
        summary.to_csv(fh, index=False, float_format="%.6g")
    return summary
