"""The cures for a miss, summarised: what each one costs and how close it answers.

A cure answers ``[S, B, Q]`` from the cache warmed with ``[S, A, B]`` without
recomputing all of B (:mod:`kvcache_exp.measure.cures`). Two questions decide whether
one is worth having, and each gets a three-valued verdict:

* **Speed**: how much of the miss penalty (miss TTFT − hit TTFT) does it win back? The
  share recovered, ``(miss − cure) / (miss − hit)`` of the median TTFTs, is 1 for a cure
  as fast as a hit and 0 for one as slow as a miss.
* **Quality**: does it answer like the exact answer (the miss, a full recompute)? Its
  next-token distributions are compared with the miss's; a full recompute against a
  second one with another batch split gives the noise floor of that comparison.

The trials of each cure are independent repeats from the same restored warm cache, so
the hit, the miss and the cure are resampled independently in every interval: all come
from the package's one bootstrap (:func:`.stats.stratified_bootstrap`, with its fixed
seed), so every number is reproducible from the CSVs. Trials that failed cache
verification never enter a statistic or a verdict. The rule for slow outliers that the
results' summary applies (:mod:`.trials`) is not applied here: cures_summary.csv has no
column to count what it would set aside. The quality figures are the median over the
verified trials: they are deterministic per configuration in practice, so they have no
interval. Reading the CSVs is :func:`.load.load_cures`; the cures' names are
:mod:`.cure_names`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kvcache_exp.analysis import stats
from kvcache_exp.analysis.cure_names import (
    ENDS,
    HIT,
    MISS,
    NOISE_FLOOR,
    config_label,
    cure_label,
    cure_rank,
    is_uncorrected,
    recompute_share,
)
from kvcache_exp.analysis.formatting import finite, num, pct, pct_ci
from kvcache_exp.analysis.load import verified_flags
from kvcache_exp.analysis.verdicts import NOT_SUPPORTED, SUPPORTED, UNDETERMINED, Verdict

#: A cure "recovers most of the miss penalty" when, in every configuration, the whole CI of
#: its recovered share lies above this; it does not when, in any, the whole CI lies below.
RECOVER_MIN_SHARE = 0.5
#: A cure "answers like a full recompute" when, in every configuration, its top-1 agreement
#: with the exact answer is at least this...
EXACT_MIN_TOP1 = 0.95
#: ...and its mean KL(exact || cure) over the compared positions at most this (nats).
EXACT_MAX_KL = 0.05

#: The quality columns, summarised as medians over the verified trials.
QUALITY_COLUMNS: tuple[str, ...] = (
    "kl_mean",
    "kl_p99",
    "top1_agreement",
    "rms_dp",
    "first_divergence",
    "quality_positions",
)
#: The noise floor's figures, carried on every row of its configuration.
FLOOR_COLUMNS: tuple[str, ...] = tuple(f"floor_{c}" for c in QUALITY_COLUMNS[:5])

#: cures_summary.csv: one row per (keep_tokens, size_a, size_b, cure).
CURE_SUMMARY_COLUMNS: tuple[str, ...] = (
    "keep_tokens",
    "size_a",
    "size_b",
    "size_q",
    "cure",
    "recompute_share",  # r (0 for the shift, NaN for the hit and the miss)
    "recompute_tokens",
    "tokens_evaluated",  # median tokens_expected: what the timed call evaluates by design
    "position_correction",
    "n",  # verified trials
    "n_unverified",
    "ttft_ms",  # median
    "ttft_ci_low_ms",
    "ttft_ci_high_ms",
    "share_of_miss",  # median cure TTFT / median miss TTFT (1 for the miss, by definition)
    "share_of_miss_ci_low",
    "share_of_miss_ci_high",
    "recovered",  # (miss - cure) / (miss - hit); 1 for the hit, 0 for the miss, by definition
    "recovered_ci_low",
    "recovered_ci_high",
    *QUALITY_COLUMNS,
    *FLOOR_COLUMNS,
)

_CONFIG: list[str] = ["keep_tokens", "size_a", "size_b"]

Config = tuple[int, int, int]  # (keep_tokens, size_a, size_b)


# --------------------------------------------------------------------------- summary


def configurations(df: pd.DataFrame) -> list[Config]:
    """(keep_tokens, size_a, size_b) in the order they first appear."""
    if df.empty:
        return []
    keys = df[_CONFIG].drop_duplicates()
    return [(int(s), int(a), int(b)) for s, a, b in keys.itertuples(index=False)]


def _column(rows: pd.DataFrame, name: str) -> np.ndarray:
    return pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=float)


def _quality(rows: pd.DataFrame) -> dict[str, float]:
    """The median of each quality figure over ``rows`` (NaN where none is defined: the
    producer leaves the hit's figures empty)."""
    return {name: stats.median(_column(rows, name)) for name in QUALITY_COLUMNS}


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


def _config_rows(config: Config, rows: pd.DataFrame, boot: dict) -> list[dict]:
    """The summary rows of one configuration, one per cure, in cure order."""
    verified = verified_flags(rows["cache_verified"]).eq(True).to_numpy()
    names = rows["cure"].astype(str).to_numpy()
    ttft = _column(rows, "ttft_ms")

    def times(cure: str) -> np.ndarray:
        return stats.clean(ttft[verified & (names == cure)])

    floor = _quality(rows[verified & (names == NOISE_FLOOR)])
    floor_row = {f"floor_{c}": floor[c] for c in QUALITY_COLUMNS[:5]}
    hit, miss = times(HIT), times(MISS)
    found = []
    for cure in sorted(set(names) - {NOISE_FLOOR}, key=cure_rank):
        mine = names == cure
        used = rows[verified & mine]
        corrections = sorted(set(rows.loc[mine, "position_correction"].dropna().astype(str)))
        found.append(
            {
                "keep_tokens": config[0],
                "size_a": config[1],
                "size_b": config[2],
                "size_q": stats.median(_column(rows[mine], "size_q")),
                "cure": cure,
                "recompute_share": recompute_share(cure),
                "recompute_tokens": stats.median(_column(used, "recompute_tokens")),
                "tokens_evaluated": stats.median(_column(used, "tokens_expected")),
                "position_correction": " / ".join(corrections),
                "n": int(len(used)),
                "n_unverified": int((mine & ~verified).sum()),
                **_timing(cure, hit, miss, times(cure), boot),
                **_quality(used),
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
    """One row per (keep_tokens, size_a, size_b, cure): configurations in the order they
    appear, cures in :func:`cure_rank` order; columns :data:`CURE_SUMMARY_COLUMNS`.

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


# --------------------------------------------------------------------------- verdicts


def _combine(outcomes: list[str]) -> str:
    """Not supported when any configuration is not, supported when every one is."""
    if NOT_SUPPORTED in outcomes:
        return NOT_SUPPORTED
    if outcomes and all(o == SUPPORTED for o in outcomes):
        return SUPPORTED
    return UNDETERMINED


def _pct(value: float) -> str:
    return pct(value, ".0f")


def _pct_with_ci(row: pd.Series, name: str) -> str:
    """``row[name]`` and its interval as percentages, e.g. ``91% [85%, 97%]``."""
    low, high = row[f"{name}_ci_low"], row[f"{name}_ci_high"]
    return f"{_pct(row[name])} {pct_ci(low, high, '.0f')}"


def _row_label(row: pd.Series) -> str:
    return config_label(row["keep_tokens"], row["size_a"], row["size_b"])


def _recovery_outcome(row: pd.Series) -> str:
    low, high = float(row["recovered_ci_low"]), float(row["recovered_ci_high"])
    if not finite(low, high):
        return UNDETERMINED
    if low > RECOVER_MIN_SHARE:
        return SUPPORTED
    if high < RECOVER_MIN_SHARE:
        return NOT_SUPPORTED
    return UNDETERMINED


_RECOVERY_RULE = (
    f"Rule: supported when, in every configuration, the whole 95% CI of the share of the "
    f"miss penalty recovered, (miss − cure) / (miss − hit) of the median TTFTs, lies above "
    f"{RECOVER_MIN_SHARE:.0%}; not supported when in any configuration it lies below "
    f"{RECOVER_MIN_SHARE:.0%}; otherwise (or when an interval is not defined) undetermined."
)


def _recovery_verdict(cure: str, rows: pd.DataFrame, label: str) -> Verdict:
    """Does the cure win back most of the time a miss loses?"""
    outcomes = [_recovery_outcome(r) for _, r in rows.iterrows()]
    parts = [
        f"{_row_label(r)}: {_pct_with_ci(r, 'recovered')} recovered (median TTFT "
        f"{num(r['ttft_ms'], '.1f', ' ms')}, {_pct_with_ci(r, 'share_of_miss')} of the "
        f"miss's; {int(r['n'])} trials) → {outcome}"
        for (_, r), outcome in zip(rows.iterrows(), outcomes, strict=True)
    ]
    status = _combine(outcomes)
    lows = rows["recovered_ci_low"].to_numpy(dtype=float)
    highs = rows["recovered_ci_high"].to_numpy(dtype=float)
    evidence = {
        "n_configs": float(len(rows)),
        "min_recovered": float(rows["recovered"].min()) if len(rows) else math.nan,
        "min_recovered_ci_low": float(lows.min()) if lows.size and finite(*lows) else math.nan,
        "max_recovered_ci_high": float(highs.max()) if highs.size and finite(*highs) else math.nan,
    }
    reason = f"{'; '.join(parts) or 'no configuration measured it'}. {_RECOVERY_RULE}"
    claim = f"{label[0].upper()}{label[1:]} recovers most of the miss penalty"
    return Verdict(f"{cure}_recovers", claim, status, reason, evidence)


def _exact_outcome(row: pd.Series) -> str:
    kl, top1 = float(row["kl_mean"]), float(row["top1_agreement"])
    floor_kl, floor_top1 = float(row["floor_kl_mean"]), float(row["floor_top1_agreement"])
    floor_misses = (math.isfinite(floor_top1) and floor_top1 < EXACT_MIN_TOP1) or (
        math.isfinite(floor_kl) and floor_kl > EXACT_MAX_KL
    )
    if floor_misses:
        return UNDETERMINED  # the comparison itself cannot resolve the thresholds here
    if finite(kl, top1) and top1 >= EXACT_MIN_TOP1 and kl <= EXACT_MAX_KL:
        return SUPPORTED
    if (math.isfinite(top1) and top1 < EXACT_MIN_TOP1) or (math.isfinite(kl) and kl > EXACT_MAX_KL):
        return NOT_SUPPORTED
    return UNDETERMINED


_EXACT_RULE = (
    f"Rule: supported when, in every configuration, the top-1 agreement with the exact answer "
    f"(the miss, a full recompute) is at least {EXACT_MIN_TOP1:.0%} and the mean KL(exact ‖ "
    f"cure) at most {EXACT_MAX_KL:g} nats; not supported when any configuration misses either; "
    "undetermined when a figure is missing, or where the noise floor (the exact answer against "
    "a second full recompute with another batch split) itself misses a threshold."
)


def _exact_verdict(cure: str, rows: pd.DataFrame, label: str, uncorrected: bool) -> Verdict:
    """Does the cure answer like a full recompute, within stated thresholds?"""
    outcomes = [_exact_outcome(r) for _, r in rows.iterrows()]
    parts = [
        f"{_row_label(r)}: top-1 {_pct(r['top1_agreement'])}, mean KL "
        f"{num(r['kl_mean'], '.3g', ' nats')}, p99 KL {num(r['kl_p99'], '.3g')} (noise floor: "
        f"top-1 {_pct(r['floor_top1_agreement'])}, mean KL {num(r['floor_kl_mean'], '.3g')}) "
        f"→ {outcome}"
        for (_, r), outcome in zip(rows.iterrows(), outcomes, strict=True)
    ]
    status = _combine(outcomes)
    note = (
        " This model has absolute position embeddings: a shift cannot correct B's positions, "
        "so this is an uncorrected shift, and its quality says nothing about a RoPE model's."
        if uncorrected
        else ""
    )
    kls, top1s = rows["kl_mean"].to_numpy(dtype=float), rows["top1_agreement"].to_numpy(dtype=float)
    evidence = {
        "n_configs": float(len(rows)),
        "max_kl_mean": float(kls.max()) if kls.size and finite(*kls) else math.nan,
        "min_top1_agreement": float(top1s.min()) if top1s.size and finite(*top1s) else math.nan,
        "max_floor_kl_mean": float(rows["floor_kl_mean"].max()) if len(rows) else math.nan,
    }
    reason = f"{'; '.join(parts) or 'no configuration measured it'}.{note} {_EXACT_RULE}"
    claim = f"{label[0].upper()}{label[1:]} answers like a full recompute"
    return Verdict(f"{cure}_exact", claim, status, reason, evidence)


def verdicts_from_summary(summary: pd.DataFrame) -> list[Verdict]:
    """The two verdicts of every cure other than the hit and the miss, from
    :func:`summarize_cures`'s table (so that a caller who has it need not bootstrap again).

    In cure order, for each cure: "<cure>_recovers" (speed), then "<cure>_exact" (quality).
    """
    found: list[Verdict] = []
    cures = sorted(set(summary["cure"].astype(str)) - set(ENDS), key=cure_rank)
    for cure in cures:
        rows = summary[summary["cure"] == cure]
        uncorrected = any(is_uncorrected(p) for p in rows["position_correction"])
        label = cure_label(cure, uncorrected)
        found.append(_recovery_verdict(cure, rows, label))
        found.append(_exact_verdict(cure, rows, label, uncorrected))
    return found
