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
from kvcache_exp.analysis.cure_names import (
    CACHED_VS_FULL,
    HIT,
    MISS,
    config_label,
    cure_label,
    is_uncorrected,
)
from kvcache_exp.analysis.cure_verdicts import verdicts_from_summary
from kvcache_exp.analysis.cures import (
    EXACT_MAX_KL,
    EXACT_MIN_TOP1,
    RECOVER_MIN_SHARE,
    summarize_cures,
)
from kvcache_exp.analysis.formatting import num, with_ci
from kvcache_exp.analysis.load import verified_flags
from kvcache_exp.analysis.verdicts import Verdict
from kvcache_exp.outputs import atomic_open
from kvcache_exp.report.document import Section, Table, VerdictItem

TITLE = "Cures for a miss"

NOT_MEASURED = (
    "The cures for a miss (shift, shift + recompute) were not measured in this run "
    "(`cures: false` in the configuration): the cures CSVs hold only their header."
)

WHAT = (
    "After A is removed, the prompt [S, B, Q] no longer matches the cached [S, A, B]. Each "
    "cure answers it from a snapshot of the warmed cache, and its TTFT is the wall time of "
    "its whole work: the cache operations, the evaluation and one sampled token. "
    "**hit**: the seed's hit, [S, A, B, Q] with only Q evaluated; it answers another prompt "
    "(with A), and is the fastest end. "
    "**miss**: B and Q evaluated again after S, which is what llama.cpp does on a prefix "
    "mismatch by default; it reaches the exact answer, and is the slowest end. "
    "**shift**: drop A's cells and move B's cells back by |A| (llama.cpp re-rotates their "
    "RoPE keys), then evaluate only Q; llama-server does this with `--cache-reuse N`, chat "
    "front-ends with a context shift. B's states were computed with A in view, so the answer "
    "is no longer exact. "
    "**shift + recompute r (tail)**: as the shift, then recompute the last r·|B| tokens of B "
    "with Q. **shift + recompute r (head)**: as the shift, then recompute the first r·|B| "
    "tokens of B, from the cells of S, so that the start of the cache is exact again; same "
    "cost as the tail. "
    "**S**, the kept prefix, matters: with S = 0 the shift moves B's first token to position "
    "0 although it was computed as a middle token, so the model sees no valid first cell "
    "(its attention sink): the worst case. A few tokens (llama.cpp's context shift keeps "
    "`n_keep`, Ollama about 5) or a system prompt (S = 32) is what users of a chat "
    "front-end have."
)


def _how_to_read(n_resamples: int) -> str:
    return (
        "Trial t of every cure ran on its own prompt t (same sizes, other text), from a "
        "snapshot of that prompt's warmed cache, the cures in a shuffled order. "
        "Share of the miss: median cure TTFT / median miss TTFT. Penalty recovered: "
        "(miss − cure) / (miss − hit) of the median TTFTs, 100% as fast as a hit, 0% as slow "
        "as a miss. Quality compares the cure's next-token distributions over Q and a "
        "greedy continuation of the exact answer (a full recompute of [S, B, Q]) with the "
        "exact answer's: the mean KL(exact ‖ cure) in nats and the top-1 agreement, each "
        "the mean over the prompts with its interval over them; the largest KL seen; the "
        "first continuation position where greedy decoding diverges (median). The hit "
        "answers another prompt, so it has no quality (n/a). Intervals: 95% percentile "
        f"bootstrap ({n_resamples:,} resamples, fixed seed): trials resampled per cure for "
        "the times (the hit, the miss and the cure independently), prompts for the quality."
    )


UNCORRECTED = (
    "**Uncorrected shift**: this model has absolute position embeddings "
    "(`position_correction` is none), so a shift cannot correct B's positions: its shift "
    "cures are labelled uncorrected, and their quality says nothing about a RoPE model's."
)

HEADER = [
    "Config (A/B, S)",
    "Cure",
    "n",
    "Tokens evaluated",
    "Median TTFT ms [95% CI]",
    "Share of miss TTFT [95% CI]",
    "Miss penalty recovered [95% CI]",
    "Mean KL (nats) [95% CI]",
    "Top-1 [95% CI]",
    "Max KL",
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
        with_ci(row["kl_mean"], row["kl_mean_ci_low"], row["kl_mean_ci_high"], ".3g"),
        with_ci(
            row["top1_agreement"] * 100,
            row["top1_agreement_ci_low"] * 100,
            row["top1_agreement_ci_high"] * 100,
            ".1f",
            "%",
        ),
        num(row["kl_max"], ".3g"),
        num(row["first_divergence"], ".0f"),
    ]


def _numerics_line(summary: pd.DataFrame) -> str | None:
    """How far an exact prefix-cache hit is from a full recompute, per configuration."""
    rows = summary[summary["cure"] == CACHED_VS_FULL]
    if rows.empty:
        return None
    parts = [
        f"{int(r['size_a'])}/{int(r['size_b'])}: mean KL "
        f"{with_ci(r['kl_mean'], r['kl_mean_ci_low'], r['kl_mean_ci_high'], '.3g')} nats, top-1 "
        f"{num(r['top1_agreement'] * 100, '.1f', '%')}, largest KL {num(r['kl_max'], '.3g')}"
        for _, r in rows.iterrows()
    ]
    return (
        "Numerics of the cache, not a cure: the exact answer through a prefix-cache hit "
        "([S, B] cached, then Q and the continuation) against one full recompute of all of "
        f"it, over {int(rows['n'].max())} prompts at S = {int(rows['keep_tokens'].iloc[0])}: "
        + "; ".join(parts)
        + ". On a CPU they are bit-identical; on a GPU the kernels of the two paths differ."
    )


def _rules() -> str:
    return (
        "Verdicts, per cure and kept prefix S: it *recovers most of the miss penalty* when, "
        f"in every configuration, the whole 95% CI of the penalty recovered lies above "
        f"{RECOVER_MIN_SHARE:.0%}; it *answers like a full recompute* when, in every "
        f"configuration, the whole interval of its top-1 agreement lies at or above "
        f"{EXACT_MIN_TOP1:.0%} and that of its mean KL at or below {EXACT_MAX_KL:g} nats. The "
        "noise floor of the quality comparison is the miss's own row: the exact answer "
        "reached through the cures' path (restored snapshot, cache operation, batch)."
    )


def _verdict_table(found: list[Verdict], summary: pd.DataFrame) -> Table:
    """Cures down, kept prefix sizes across, both verdicts in each cell."""
    keeps = list(dict.fromkeys(int(k) for k in summary["keep_tokens"]))
    by_key = {v.key: v.status.upper() for v in found}
    names = [c for c in dict.fromkeys(summary["cure"].astype(str)) if c not in (HIT, MISS)]
    names = [c for c in names if c != CACHED_VS_FULL]
    uncorrected = any(is_uncorrected(p) for p in summary["position_correction"])
    rows = [
        [cure_label(c, uncorrected)]
        + [
            f"time: {by_key.get(f'{c}_s{k}_recovers', 'n/a')}; quality: "
            f"{by_key.get(f'{c}_s{k}_exact', 'n/a')}"
            for k in keeps
        ]
        for c in names
    ]
    return Table(["Cure"] + [f"S = {k}" for k in keeps], rows)


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
    cures = summary[summary["cure"] != CACHED_VS_FULL]
    blocks.append(Table(HEADER, [_table_row(r) for _, r in cures.iterrows()]))
    if numerics := _numerics_line(summary):
        blocks.append(numerics)
    blocks.append(_rules())
    found = verdicts_from_summary(summary)
    blocks.append(_verdict_table(found, summary))
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
