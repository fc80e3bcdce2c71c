"""Per-configuration statistics: the seed's table with intervals, tests and throughput.

One row per configuration (size_a, size_b), computed from the trials alone; the claims
that compare configurations live in :mod:`.verdicts`.
"""

from __future__ import annotations

import math

import pandas as pd

from kvcache_exp.analysis import stats, verdicts
from kvcache_exp.analysis.load import verified_flags, verified_only

#: summary.csv's columns; the first five are the seed's table (hit/miss are medians).
SUMMARY_COLUMNS: tuple[str, ...] = (
    "size_a",
    "size_b",
    "hit_ttft_ms",
    "miss_ttft_ms",
    "degradation_pct",
    "degradation_ci_low",
    "degradation_ci_high",
    "n_hit",
    "n_miss",
    "hit_ttft_mean_ms",
    "hit_ttft_std_ms",
    "hit_ttft_ci_low_ms",
    "hit_ttft_ci_high_ms",
    "miss_ttft_mean_ms",
    "miss_ttft_std_ms",
    "miss_ttft_ci_low_ms",
    "miss_ttft_ci_high_ms",
    "mannwhitney_u",
    "mannwhitney_p",
    "hit_tokens_recomputed",
    "miss_tokens_recomputed",
    "hit_throughput_tok_s",
    "miss_throughput_tok_s",
    "hit_decode_tok_s",
    "miss_decode_tok_s",
    "decode_ratio",
    "decode_ratio_ci_low",
    "decode_ratio_ci_high",
    "hit_prefill_tok_s",
    "miss_prefill_tok_s",
    "n_unverified",
    "miss_costlier",
    "cost_ratio",
    "cost_ratio_ci_low",
    "cost_ratio_ci_high",
    "p_miss_slower",
    "p_miss_slower_adjusted",
    "n_set_aside",
)

#: summary.csv's columns from the main hypothesis's verdict in each configuration:
#: (column, key of the verdict's evidence); ``miss_costlier`` is the verdict itself.
_HYPOTHESIS_EVIDENCE = (
    ("cost_ratio", "ratio"),
    ("cost_ratio_ci_low", "ratio_ci_low"),
    ("cost_ratio_ci_high", "ratio_ci_high"),
    ("p_miss_slower", "p_one_sided"),
    ("p_miss_slower_adjusted", "p_adjusted"),
    ("n_set_aside", "n_set_aside"),
)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (size_a, size_b), in the order the results came in, with
    the main hypothesis decided in each (:func:`~kvcache_exp.analysis.verdicts.
    miss_costlier_by_config`, which adjusts its tests across the configurations)."""
    rows = [
        _config_row(int(a), int(b), group)
        for (a, b), group in df.groupby(["size_a", "size_b"], sort=False)
    ]
    by_config = {
        (int(v.evidence["size_a"]), int(v.evidence["size_b"])): v
        for v in verdicts.miss_costlier_by_config(df)
    }
    for row in rows:
        found = by_config.get((row["size_a"], row["size_b"]))
        row["miss_costlier"] = found.status if found else verdicts.UNDETERMINED
        for column, key in _HYPOTHESIS_EVIDENCE:
            row[column] = found.evidence.get(key, math.nan) if found else math.nan
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def _config_row(size_a: int, size_b: int, group: pd.DataFrame) -> dict[str, float]:
    """All summary numbers of one configuration, from its verified trials."""
    verified = verified_only(group)
    hit = verified[verified["condition"] == "hit"]
    miss = verified[verified["condition"] == "miss"]
    row: dict[str, float] = {"size_a": size_a, "size_b": size_b}
    row |= _ttft_stats(hit["ttft_ms"], miss["ttft_ms"])
    row |= _throughput_stats(hit, miss)
    row["n_unverified"] = int(verified_flags(group["cache_verified"]).eq(False).sum())
    return row


def _ttft_stats(hit: pd.Series, miss: pd.Series) -> dict[str, float]:
    """Medians, spread, intervals, degradation and the rank test of hit vs miss TTFT."""
    row: dict[str, float] = {}
    for name, values in (("hit", hit), ("miss", miss)):
        desc, ci = stats.describe(values), stats.median_ci(values)
        row[f"n_{name}"] = int(desc["n"])
        row[f"{name}_ttft_ms"] = desc["median"]
        row[f"{name}_ttft_mean_ms"] = desc["mean"]
        row[f"{name}_ttft_std_ms"] = desc["std"]
        row[f"{name}_ttft_ci_low_ms"], row[f"{name}_ttft_ci_high_ms"] = ci.low, ci.high
    deg = stats.degradation_ci(hit, miss)
    row["degradation_pct"] = deg.estimate
    row["degradation_ci_low"], row["degradation_ci_high"] = deg.low, deg.high
    test = stats.mann_whitney(hit, miss)
    row["mannwhitney_u"], row["mannwhitney_p"] = test.u, test.p
    return row


def _throughput_stats(hit: pd.DataFrame, miss: pd.DataFrame) -> dict[str, float]:
    """Generation, decode and prefill throughput per condition, and the decode ratio."""
    row: dict[str, float] = {}
    for name, rows in (("hit", hit), ("miss", miss)):
        row[f"{name}_tokens_recomputed"] = stats.median(rows["tokens_recomputed"])
        row[f"{name}_throughput_tok_s"] = stats.median(rows["throughput_tok_s"])
        row[f"{name}_decode_tok_s"] = stats.median(rows["decode_tok_s"])
        row[f"{name}_prefill_tok_s"] = stats.prefill_tok_s(rows)
    ratio = stats.ratio_ci(hit["decode_tok_s"], miss["decode_tok_s"])
    row["decode_ratio"] = ratio.estimate
    row["decode_ratio_ci_low"], row["decode_ratio_ci_high"] = ratio.low, ratio.high
    return row
