"""The cures for a miss, summarised: what each one costs and how close it answers.

A cure answers ``[S, B, Q]`` from the cache warmed with ``[S, A, B]`` without
recomputing all of B (:mod:`kvcache_exp.measure.cures`). Two questions decide whether
one is worth having, and each gets a three-valued verdict at each kept prefix size S
(:mod:`.cure_verdicts`; the thresholds are stated here):

* **Speed**: how much of the miss penalty (miss TTFT − hit TTFT) does it win back? The
  share recovered, ``(miss − cure) / (miss − hit)`` of the median TTFTs, is 1 for a cure
  as fast as a hit and 0 for one as slow as a miss.
* **Quality**: does it answer like the exact answer (a full recompute)? Its next-token
  distributions over Q and a continuation are compared with the exact answer's; the
  miss, which reaches the exact answer through the cures' own path, is the noise floor.

Trial t of a cure ran on prompt t, so the prompt is the unit: the quality figures are
means over the prompts with a bootstrap interval over them, and the timing figures are
medians over the trials, the hit, the miss and the cure resampled independently. Every
interval comes from the package's one bootstrap (:func:`.stats.stratified_bootstrap`,
fixed seed), so every number is reproducible from the CSVs. Trials that failed cache
verification never enter a statistic or a verdict, and the results' rule for slow
outliers (:mod:`.trials`) sets aside the same hiccups here (``n_set_aside``). Reading the
CSVs is :func:`.load.load_cures`; the cures' names are :mod:`.cure_names`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kvcache_exp.analysis import stats, trials
from kvcache_exp.analysis.cure_names import (
    CACHED_VS_FULL,
    FLOOR,
    HIT,
    MISS,
    cure_rank,
    recompute_share,
    recompute_where,
)
from kvcache_exp.analysis.load import verified_flags

#: A cure "recovers most of the miss penalty" when, in every configuration, the whole CI of
#: its recovered share lies above this; it does not when, in any, the whole CI lies below.
RECOVER_MIN_SHARE = 0.5
#: A cure "answers like a full recompute" when, in every configuration, the whole CI of its
#: top-1 agreement with the exact answer lies at or above this...
EXACT_MIN_TOP1 = 0.95
#: ...and the whole CI of its mean KL(exact || cure) at or below this (nats).
EXACT_MAX_KL = 0.05

#: The timing figures of a summary row (none for the untimed cached_vs_full row).
TIMING_COLUMNS: tuple[str, ...] = tuple(
    f"{name}{end}"
    for name in ("ttft", "share_of_miss", "recovered")
    for end in (
        ("_ms", "_ci_low_ms", "_ci_high_ms") if name == "ttft" else ("", "_ci_low", "_ci_high")
    )
)
#: The quality figures with an interval over the prompts (means over them).
QUALITY_MEANS: tuple[str, ...] = ("kl_mean", "top1_agreement")
#: cures_summary.csv: one row per (keep_tokens, size_a, size_b, cure).
CURE_SUMMARY_COLUMNS: tuple[str, ...] = (
    "keep_tokens",
    "size_a",
    "size_b",
    "size_q",
    "cure",
    "recompute_share",  # r (0 for the shift, NaN for the hit and the miss)
    "recompute_where",  # head or tail ("" otherwise)
    "recompute_tokens",
    "tokens_evaluated",  # median tokens_expected: what the timed call evaluates by design
    "position_correction",
    "n",  # verified trials (prompts)
    "n_unverified",
    "n_set_aside",  # slow outlier trials left out of the timing figures
    "ttft_ms",  # median
    "ttft_ci_low_ms",
    "ttft_ci_high_ms",
    "share_of_miss",  # median cure TTFT / median miss TTFT (1 for the miss, by definition)
    "share_of_miss_ci_low",
    "share_of_miss_ci_high",
    "recovered",  # (miss - cure) / (miss - hit); 1 for the hit, 0 for the miss, by definition
    "recovered_ci_low",
    "recovered_ci_high",
    "kl_mean",  # mean over the prompts of each prompt's mean KL (nats)
    "kl_mean_ci_low",
    "kl_mean_ci_high",
    "top1_agreement",  # mean over the prompts
    "top1_agreement_ci_low",
    "top1_agreement_ci_high",
    "kl_p99",  # median over the prompts, where each prompt had enough positions
    "kl_max",  # the largest over every prompt and position
    "rms_dp",  # mean over the prompts
    "first_divergence",  # median over the prompts
    "quality_positions",  # positions per prompt (median)
    "floor_kl_mean",  # the miss's, at the same S: the comparison's noise floor
    "floor_kl_mean_ci_high",
    "floor_top1_agreement",
    "floor_top1_agreement_ci_low",
)

_CONFIG: list[str] = ["keep_tokens", "size_a", "size_b"]

Config = tuple[int, int, int]  # (keep_tokens, size_a, size_b)


# --------------------------------------------------------------------------- summary


def configurations(df: pd.DataFrame) -> list[Config]:
    """(keep_tokens, size_a, size_b) in the order they first appear."""
    if df.empty:
        return []
    keys = df[_CONFIG].drop_duplicates()
    return [(int(s), int(a), int(b)) for s, a, b in keys.to_numpy()]


def _column(rows: pd.DataFrame, name: str) -> np.ndarray:
    return pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=float)


def _mean(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(samples[0], axis=axis)


def _quality(rows: pd.DataFrame, boot: dict) -> dict[str, float]:
    """The quality figures over ``rows`` (one per prompt): means with an interval over the
    prompts, the rest summarised (NaN where none is defined: the hit has none)."""
    found: dict[str, float] = {}
    for name in QUALITY_MEANS:
        interval = stats.stratified_bootstrap([_column(rows, name)], _mean, **boot)[0]
        found |= {name: interval.estimate}
        found |= {f"{name}_ci_low": interval.low, f"{name}_ci_high": interval.high}
    kl_max = stats.clean(_column(rows, "kl_max"))
    return found | {
        "kl_p99": stats.median(_column(rows, "kl_p99")),
        "kl_max": float(kl_max.max()) if kl_max.size else math.nan,
        "rms_dp": float(np.mean(d))
        if (d := stats.clean(_column(rows, "rms_dp"))).size
        else math.nan,
        "first_divergence": stats.median(_column(rows, "first_divergence")),
        "quality_positions": stats.median(_column(rows, "quality_positions")),
    }


def _recovered(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """(miss − cure) / (miss − hit) of the samples' medians; NaN where miss = hit (no penalty
    to recover), so that such a resample makes the interval undefined, not infinite."""
    hit, miss, cure = (np.median(s, axis=axis) for s in samples)
    penalty = miss - hit
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(penalty != 0, (miss - cure) / penalty, math.nan)


def _timing(
    cure: str,
    hit: np.ndarray,
    miss: np.ndarray,
    times: np.ndarray,
    boot: dict,
) -> dict[str, float]:
    """Median TTFT, its share of the miss's and the share of the penalty recovered.

    The hit's recovered share is 1 and the miss's 0, and the miss's share of itself is 1,
    by definition: they get those values without an interval (there is nothing to
    sample), rather than an interval that only shows resampling noise.
    """
    median = stats.median_ci(times, **boot)
    nan = stats.Interval(math.nan, math.nan, math.nan)
    both = hit.size > 0 and miss.size > 0
    if cure == MISS:
        share = stats.Interval(1.0, math.nan, math.nan) if miss.size else nan
        recovered = stats.Interval(0.0, math.nan, math.nan) if both else nan
    else:
        # median(times) / median(miss): ratio_ci's second sample over its first.
        share = stats.ratio_ci(miss, times, **boot)
        if cure == HIT:
            recovered = stats.Interval(1.0, math.nan, math.nan) if both else nan
        else:
            recovered = stats.stratified_bootstrap([hit, miss, times], _recovered, **boot)[0]
    return {
        "ttft_ms": median.estimate,
        "ttft_ci_low_ms": median.low,
        "ttft_ci_high_ms": median.high,
        "share_of_miss": share.estimate,
        "share_of_miss_ci_low": share.low,
        "share_of_miss_ci_high": share.high,
        "recovered": recovered.estimate,
        "recovered_ci_low": recovered.low,
        "recovered_ci_high": recovered.high,
    }


def _kept_times(values: np.ndarray) -> tuple[np.ndarray, int]:
    """The finite TTFTs without the slow outliers (the results' rule), and how many were
    set aside."""
    values = stats.clean(values)
    if trials.SLOW_OUTLIER_K is None:
        return values, 0
    slow = stats.slow_outliers(values, k=trials.SLOW_OUTLIER_K, slow="high")
    return values[~slow], int(slow.sum())


def _config_rows(config: Config, rows: pd.DataFrame, boot: dict) -> list[dict]:
    """The summary rows of one configuration and kept prefix, one per cure, in cure order."""
    verified = verified_flags(rows["cache_verified"]).eq(True).to_numpy()
    names = rows["cure"].astype(str).to_numpy()
    ttft = _column(rows, "ttft_ms")
    times = {cure: _kept_times(ttft[verified & (names == cure)]) for cure in set(names)}
    floor = _quality(rows[verified & (names == FLOOR)], boot)
    floor_row = {
        "floor_kl_mean": floor["kl_mean"],
        "floor_kl_mean_ci_high": floor["kl_mean_ci_high"],
        "floor_top1_agreement": floor["top1_agreement"],
        "floor_top1_agreement_ci_low": floor["top1_agreement_ci_low"],
    }
    hit, miss = times.get(HIT, (np.array([]), 0))[0], times.get(MISS, (np.array([]), 0))[0]
    found = []
    for cure in sorted(set(names), key=cure_rank):
        mine = names == cure
        used = rows[verified & mine]
        corrections = sorted(set(rows.loc[mine, "position_correction"].dropna().astype(str)))
        timing = (
            _timing(cure, hit, miss, times[cure][0], boot)
            if cure != CACHED_VS_FULL
            else dict.fromkeys(TIMING_COLUMNS, math.nan)
        )
        found.append(
            {
                "keep_tokens": config[0],
                "size_a": config[1],
                "size_b": config[2],
                "size_q": stats.median(_column(rows[mine], "size_q")),
                "cure": cure,
                "recompute_share": recompute_share(cure),
                "recompute_where": recompute_where(cure),
                "recompute_tokens": stats.median(_column(used, "recompute_tokens")),
                "tokens_evaluated": stats.median(_column(used, "tokens_expected")),
                "position_correction": " / ".join(corrections),
                "n": int(len(used)),
                "n_unverified": int((mine & ~verified).sum()),
                "n_set_aside": times[cure][1],
                **timing,
                **_quality(used, boot),
                **floor_row,
            }
        )
    return found


def summarize_cures(
    df: pd.DataFrame,
    *,
    n_resamples: int = stats.RESAMPLES,
    seed: int = stats.SEED,
) -> pd.DataFrame:
    """One row per (keep_tokens, size_a, size_b, cure): configurations and kept prefixes in
    the order they appear, cures in :func:`cure_rank` order; columns
    :data:`CURE_SUMMARY_COLUMNS`.

    Only verified trials (``cache_verified`` True) enter a number; ``n_unverified`` counts
    the others. Intervals are 95% percentile bootstraps with a fixed seed.
    """
    boot = {"n_resamples": n_resamples, "seed": seed}
    rows: list[dict] = []
    for config in configurations(df):
        keep, size_a, size_b = config
        here = (df["keep_tokens"] == keep) & (df["size_a"] == size_a) & (df["size_b"] == size_b)
        rows += _config_rows(config, df[here], boot)
    return pd.DataFrame(rows, columns=list(CURE_SUMMARY_COLUMNS))
