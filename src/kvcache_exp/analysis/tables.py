"""Per-configuration statistics: the seed's table with intervals, tests and throughput.

One row per configuration (size_a, size_b), and the line fits across configurations,
from the same trials as the verdicts (:func:`.trials.by_configuration`: verified, with a
finite TTFT, slow outliers set aside and counted in ``n_set_aside``), so that the table
and the verdicts tell one story: the medians are those of the kept trials, and the
degradation is the verdict's median miss / median hit TTFT ratio as (ratio − 1) · 100,
with the same interval ends. The claims that compare configurations live in
:mod:`.verdicts`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kvcache_exp.analysis import stats, trials, verdicts
from kvcache_exp.analysis.load import verified_flags
from kvcache_exp.analysis.trials import Configuration

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
#: The degradation, (median miss / median hit - 1) * 100, from the cost ratio's columns.
_DEGRADATION_FROM_RATIO = (
    ("degradation_pct", "cost_ratio"),
    ("degradation_ci_low", "cost_ratio_ci_low"),
    ("degradation_ci_high", "cost_ratio_ci_high"),
)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (size_a, size_b), in the order the results came in, with
    the main hypothesis decided in each (:func:`~kvcache_exp.analysis.verdicts.
    miss_costlier_per_config`, which adjusts its tests across the configurations).

    Every number of a row comes from the configuration's kept trials: ``n_hit`` and
    ``n_miss`` count them, ``n_set_aside`` the slow TTFT outliers left out and
    ``n_unverified`` the trials that failed cache verification. TTFT, generation and
    prefill figures use the trials whose TTFT is kept; decode figures those whose decode
    throughput is kept (the same rule, slow being low).
    """
    configs = trials.by_configuration(df)
    found = {
        (c.size_a, c.size_b): (c, v)
        for c, v in zip(configs, verdicts.miss_costlier_per_config(configs), strict=True)
    }
    rows = []
    for (a, b), group in df.groupby(["size_a", "size_b"], sort=False):
        config, verdict = found.get((int(a), int(b)), (_no_trials(int(a), int(b)), None))
        row: dict[str, float] = {"size_a": config.size_a, "size_b": config.size_b}
        row |= _ttft_stats(config, verdict)
        row |= _throughput_stats(config, df)
        row["n_unverified"] = int(verified_flags(group["cache_verified"]).eq(False).sum())
        rows.append(row)
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def fits(df: pd.DataFrame) -> dict[str, stats.LineFit]:
    """The three least-squares lines over every kept trial, keyed by a short name.

    These describe the data for the summary's table; the verdicts do not use them (the
    trials of one configuration are not independent points along B).
    """
    kept = trials.kept_rows(df, trials.by_configuration(df))
    return {
        "miss_ttft_vs_recomputed": stats.fit_miss_ttft_vs_recomputed(kept),
        "miss_prefill_vs_recomputed": stats.fit_prefill_vs_recomputed(kept),
        "hit_ttft_vs_b": stats.fit_hit_ttft_vs_b(kept),
    }


def _no_trials(size_a: int, size_b: int) -> Configuration:
    """A configuration none of whose trials can be used (all failed verification, say)."""
    empty, rows = np.empty(0), np.empty(0, dtype=np.intp)
    return Configuration(size_a, size_b, empty, empty, empty, empty, rows, rows, math.nan)


def _ttft_stats(config: Configuration, verdict: verdicts.Verdict | None) -> dict[str, float]:
    """Medians, spread, intervals, degradation, the rank test and the hypothesis's verdict.

    The degradation is the verdict's ratio of medians, as a percentage change: one
    bootstrap for both, so that they always agree.
    """
    row: dict[str, float] = {}
    for name, values in (("hit", config.hit), ("miss", config.miss)):
        desc, ci = stats.describe(values), stats.median_ci(values)
        row[f"n_{name}"] = int(desc["n"])
        row[f"{name}_ttft_ms"] = desc["median"]
        row[f"{name}_ttft_mean_ms"] = desc["mean"]
        row[f"{name}_ttft_std_ms"] = desc["std"]
        row[f"{name}_ttft_ci_low_ms"], row[f"{name}_ttft_ci_high_ms"] = ci.low, ci.high
    evidence = verdict.evidence if verdict else {}
    for column, key in _HYPOTHESIS_EVIDENCE:
        row[column] = evidence.get(key, math.nan)
    row["miss_costlier"] = verdict.status if verdict else verdicts.UNDETERMINED
    for column, ratio in _DEGRADATION_FROM_RATIO:
        row[column] = (row[ratio] - 1.0) * 100.0
    test = stats.mann_whitney(config.hit, config.miss)
    row["mannwhitney_u"], row["mannwhitney_p"] = test.u, test.p
    return row


def _throughput_stats(config: Configuration, df: pd.DataFrame) -> dict[str, float]:
    """Generation, decode and prefill throughput per condition, and the decode ratio."""
    row: dict[str, float] = {}
    for name, positions, decode in (
        ("hit", config.hit_rows, config.hit_decode),
        ("miss", config.miss_rows, config.miss_decode),
    ):
        rows = df.iloc[positions]
        row[f"{name}_tokens_recomputed"] = stats.median(rows["tokens_recomputed"])
        row[f"{name}_throughput_tok_s"] = stats.median(rows["throughput_tok_s"])
        row[f"{name}_decode_tok_s"] = stats.median(decode)
        row[f"{name}_prefill_tok_s"] = stats.prefill_tok_s(rows)
    ratio = stats.ratio_ci(config.hit_decode, config.miss_decode)
    row["decode_ratio"] = ratio.estimate
    row["decode_ratio_ci_low"], row["decode_ratio_ci_high"] = ratio.low, ratio.high
    return row
