"""Verdicts on the experiment's hypothesis and on the seed's three claims.

This module is longer than the package's others (about 500 lines) on purpose: it holds
every rule that decides a claim, each beside the numbers it reads and the sentence it
writes, so that a scientist can check all four decisions by reading this one file. The
data it starts from (:mod:`.trials`), the statistics (:mod:`.stats`) and the number
formats (:mod:`.formatting`) are elsewhere.

Every verdict is SUPPORTED, NOT SUPPORTED or UNDETERMINED, and its ``reason`` names the
numbers and the thresholds that decided it. A verdict is never SUPPORTED because the data
were too noisy to say anything: a claim of "no effect" (hit TTFT constant, decode
unaffected, no curvature) is SUPPORTED only by an equivalence test, when the whole
confidence interval of the effect lies inside a stated margin; a claim of "an effect"
(a miss costs more) only when a test rejects its opposite. Anything in between, and any
needed interval that is not finite, is UNDETERMINED.

How the numbers are made, and why (``benchmarks/verdict_calibration.py`` simulates the
seed's design under known truths and prints how often each verdict comes out):

- The trials are those of :func:`.trials.by_configuration`, as for the seed's table:
  verified, with a finite TTFT, and slow outliers set aside (each reason says how many).
- The configuration (size_a, size_b), not the trial, is the unit along B: the trials of
  one configuration repeat one measurement. Each configuration contributes its median,
  and slopes and curvature are fitted through the configurations' medians. (Least
  squares over every trial treats 30 trials as 30 independent points along B; errors
  clustered by configuration have 2 degrees of freedom with 3 configurations, and their
  95% intervals covered the truth in only about 75% of simulated runs.)
- Intervals come from the package's one bootstrap, :func:`.stats.stratified_bootstrap`,
  which resamples the trials of each configuration and condition on their own, with a
  fixed seed, so every verdict is reproducible from the CSVs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kvcache_exp.analysis import stats, trials
from kvcache_exp.analysis.formatting import ci as _ci
from kvcache_exp.analysis.formatting import finite as _finite
from kvcache_exp.analysis.formatting import num as _num
from kvcache_exp.analysis.formatting import pct, pct_ci
from kvcache_exp.analysis.trials import Configuration

SUPPORTED, NOT_SUPPORTED, UNDETERMINED = "supported", "not supported", "undetermined"

#: Confidence of every interval a verdict uses (the package's one level), and the level
#: of every test.
CONFIDENCE = stats.CONFIDENCE
ALPHA = 0.05

#: Hit TTFT counts as constant when the change over the tested B range, as a share of the
#: hit TTFT, has its whole interval inside ±this; as changing when it is at least this.
HIT_CONSTANT_MAX_CHANGE = 0.10
#: Miss TTFT counts as linear when the parabola's bow over the tested range, as a share of
#: the line's rise over that range, has its whole interval inside ±this; as curved when the
#: line is rejected and the bow is at least this. 15%, not 10%: with 3 configurations of
#: 10 trials at 5% noise the bow's interval is about ±9% wide, so a 10% margin could almost
#: never be met (see the calibration).
MISS_LINEAR_MAX_BOW = 0.15
#: ...measured at this many distinct numbers of tokens recomputed (a parabola needs 3).
MISS_LINEAR_MIN_POINTS = 3
#: Decode counts as unaffected when the interval of median decode tok/s miss/hit lies
#: inside these bounds; as affected when it excludes 1 and the ratio lies outside them.
DECODE_RATIO_BOUNDS = (0.90, 1.10)


@dataclass(frozen=True)
class Verdict:
    """The decision on one claim, the sentence that justifies it and its numbers."""

    key: str
    claim: str
    status: str
    reason: str
    evidence: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- public


def verdicts(
    df: pd.DataFrame, *, n_resamples: int = stats.RESAMPLES, seed: int = stats.SEED
) -> list[Verdict]:
    """The hypothesis (a miss costs more than a hit) and the seed's three claims.

    In this order: "miss_costlier", "hit_constant", "miss_linear", "decode_unaffected".
    Unverified trials, trials without a finite TTFT and slow outliers are dropped here
    (:func:`.trials.by_configuration`), whatever the caller passed.
    """
    configs = trials.by_configuration(df)
    boot = {"n_resamples": n_resamples, "seed": seed}
    return [
        _overall_miss_costlier(miss_costlier_per_config(configs, **boot)),
        _verdict_hit_constant(configs, **boot),
        _verdict_miss_linear(configs, **boot),
        _verdict_decode(configs, **boot),
    ]


# --------------------------------------------------------------------------- helpers


def _medians(samples: Sequence[np.ndarray], axis: int = -1) -> np.ndarray:
    """Stack of the samples' medians along the last axis (vectorised over resamples)."""
    return np.stack([np.median(s, axis=axis) for s in samples], axis=-1)


def _aside(n: int) -> str:
    """The clause that says how many slow trials were set aside, if any."""
    return f"; {n} slow outlier trial{'s' if n != 1 else ''} set aside" if n else ""


def _pct(value: float) -> str:
    return pct(value, "+.1f")


def _pct_ci(interval: stats.Interval) -> str:
    return pct_ci(interval.low, interval.high, "+.1f")


# --------------------------------------------------------------------------- hypothesis


MISS_COSTLIER_CLAIM = "A cache miss makes the first token slower than a cache hit"
_MISS_COSTLIER_RULE = (
    "Rule, per configuration: supported when the one-sided Mann-Whitney test (miss slower), "
    f"Holm-Šidák-adjusted over the configurations, gives p < {ALPHA:g} and the "
    f"{CONFIDENCE:.0%} bootstrap CI of median miss / median hit TTFT lies above 1; not "
    "supported when the opposite test (miss faster) gives Holm-Šidák-adjusted p < "
    f"{ALPHA:g} and the CI lies below 1; otherwise undetermined."
)


def miss_costlier_per_config(
    configs: list[Configuration], *, n_resamples: int = stats.RESAMPLES, seed: int = stats.SEED
) -> list[Verdict]:
    """The hypothesis in each configuration: a one-sided rank test and a ratio interval.

    The ratio and its interval are also the seed's table's cost ratio and, as
    (ratio - 1) * 100, its degradation (:mod:`.tables`).
    """
    hits, misses = [c.hit for c in configs], [c.miss for c in configs]
    slower = stats.mann_whitney_greater_each(hits, misses)
    faster = stats.mann_whitney_greater_each(misses, hits)
    ratios = _ratio_intervals(configs, n_resamples=n_resamples, seed=seed)
    adjusted = stats.holm_sidak
    return [
        _miss_costlier_verdict(config, tests, ratio)
        for config, *tests, ratio in zip(
            configs, slower, adjusted(slower), faster, adjusted(faster), ratios, strict=True
        )
    ]


def _ratio_intervals(
    configs: list[Configuration], *, n_resamples: int, seed: int
) -> list[stats.Interval]:
    """median(miss) / median(hit) TTFT per configuration, with bootstrap intervals.

    One bootstrap for all configurations when each has two or more trials per condition
    (the usual case, and much faster); otherwise one per configuration, so that a
    configuration with a single trial leaves the others' intervals defined.
    """

    def ratios(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        k = len(samples) // 2
        return _medians(samples[k:], axis) / _medians(samples[:k], axis)

    def boot(group: list[Configuration]) -> list[stats.Interval]:
        return stats.stratified_bootstrap(
            [c.hit for c in group] + [c.miss for c in group],
            lambda *s, axis=-1: np.moveaxis(ratios(*s, axis=axis), -1, 0),
            n_resamples=n_resamples,
            confidence=CONFIDENCE,
            seed=seed,
        )

    if configs and all(c.hit.size >= 2 and c.miss.size >= 2 for c in configs):
        return boot(configs)
    return [boot([c])[0] for c in configs]


def _miss_costlier_verdict(
    config: Configuration, tests: Sequence[float], ratio: stats.Interval
) -> Verdict:
    """One configuration's verdict from the two one-sided tests and the ratio's interval."""
    p, p_adjusted, p_faster, p_faster_adjusted = (float(t) for t in tests)
    numbers = (
        f"A/B = {config.label}: median miss / hit TTFT = {_num(ratio.estimate, '.3g')} "
        f"({CONFIDENCE:.0%} CI {_ci(ratio.low, ratio.high, '.3g')}), one-sided Mann-Whitney "
        f"p = {_num(p, '.2g')} for a slower miss (Holm-Šidák-adjusted {_num(p_adjusted, '.2g')}), "
        f"{config.hit.size} hit / {config.miss.size} miss trials"
        f"{_aside(config.ttft_set_aside)}."
    )
    status, why = _miss_costlier_outcome(ratio, p_adjusted, p_faster_adjusted)
    evidence = {
        "size_a": float(config.size_a),
        "size_b": float(config.size_b),
        "ratio": ratio.estimate,
        "ratio_ci_low": ratio.low,
        "ratio_ci_high": ratio.high,
        "p_one_sided": p,
        "p_adjusted": p_adjusted,
        "p_faster": p_faster,
        "p_faster_adjusted": p_faster_adjusted,
        "n_hit": float(config.hit.size),
        "n_miss": float(config.miss.size),
        "n_set_aside": float(config.ttft_set_aside),
    }
    return Verdict("miss_costlier", MISS_COSTLIER_CLAIM, status, f"{numbers} {why}", evidence)


def _miss_costlier_outcome(
    ratio: stats.Interval, p_adjusted: float, p_faster_adjusted: float
) -> tuple[str, str]:
    """One configuration's status and why, from the adjusted one-sided p-values (a slower
    miss, a faster miss) and the interval of the miss / hit ratio."""
    if not _finite(ratio.low, ratio.high, p_adjusted, p_faster_adjusted):
        return (
            UNDETERMINED,
            "Undetermined: the interval or the test is not defined (too few trials).",
        )
    if p_adjusted < ALPHA and ratio.low > 1:
        return SUPPORTED, "Supported: a miss is slower, and the whole CI lies above 1."
    if p_faster_adjusted < ALPHA and ratio.high < 1:
        return NOT_SUPPORTED, (
            "Not supported: a miss is faster (Holm-Šidák-adjusted p = "
            f"{_num(p_faster_adjusted, '.2g')} for a faster miss, and the whole CI lies below 1)."
        )
    return UNDETERMINED, "Undetermined: the data cannot tell the two apart."


def _overall_miss_costlier(per_config: list[Verdict]) -> Verdict:
    """Supported when every configuration is, not supported when any is not."""
    if not per_config:
        reason = f"no configuration has verified hit and miss trials. {_MISS_COSTLIER_RULE}"
        return Verdict("miss_costlier", MISS_COSTLIER_CLAIM, UNDETERMINED, reason)
    statuses = [v.status for v in per_config]
    n_sup, n_not = statuses.count(SUPPORTED), statuses.count(NOT_SUPPORTED)
    if n_not:
        status = NOT_SUPPORTED
    elif n_sup == len(per_config):
        status = SUPPORTED
    else:
        status = UNDETERMINED
    parts = "; ".join(
        f"{int(v.evidence['size_a'])}/{int(v.evidence['size_b'])} {v.status.upper()}: "
        f"ratio {_num(v.evidence['ratio'], '.3g')} "
        f"{_ci(v.evidence['ratio_ci_low'], v.evidence['ratio_ci_high'], '.3g')}, "
        f"adjusted p = {_num(v.evidence['p_adjusted'], '.2g')}"
        for v in per_config
    )
    reason = (
        f"supported in {n_sup} and not supported in {n_not} of {len(per_config)} "
        f"configurations (median miss / hit TTFT with its {CONFIDENCE:.0%} CI): {parts}. "
        f"{_MISS_COSTLIER_RULE} Overall: supported when every configuration is, not "
        "supported when any is not."
    )
    lows = [v.evidence["ratio_ci_low"] for v in per_config]
    evidence = {
        "n_configs": float(len(per_config)),
        "n_supported": float(n_sup),
        "n_not_supported": float(n_not),
        "min_ratio": min(v.evidence["ratio"] for v in per_config),
        "min_ratio_ci_low": min(lows) if all(map(math.isfinite, lows)) else math.nan,
        "max_p_adjusted": max(v.evidence["p_adjusted"] for v in per_config),
    }
    return Verdict("miss_costlier", MISS_COSTLIER_CLAIM, status, reason, evidence)


# --------------------------------------------------------------------------- claim 1


HIT_CONSTANT_CLAIM = "Cache-hit TTFT is constant across configurations"


def _verdict_hit_constant(configs: list[Configuration], *, n_resamples: int, seed: int) -> Verdict:
    """Claim 1, as an equivalence test on the change of hit TTFT over the B range."""
    margin = HIT_CONSTANT_MAX_CHANGE
    rule = (
        f"Rule: supported when the whole {CONFIDENCE:.0%} CI of the change lies within "
        f"±{margin:.0%} of the hit TTFT; not supported when the CI excludes 0 and the change "
        f"is at least {margin:.0%}; otherwise undetermined."
    )
    used = [c for c in configs if c.hit.size]
    b = np.array([c.size_b for c in used])
    if np.unique(b).size < 2:
        reason = f"needs hit trials at 2 or more distinct B values, found {np.unique(b).size}. "
        return Verdict("hit_constant", HIT_CONSTANT_CLAIM, UNDETERMINED, reason + rule)
    span = float(b.max() - b.min())
    aside = sum(c.set_aside[0] for c in used)

    def statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        medians = _medians(samples, axis)
        slope, _ = stats.line_and_bow(b, medians)
        return np.stack([slope, slope * span / medians.mean(axis=-1), medians.mean(axis=-1)])

    slope, share, level = stats.stratified_bootstrap(
        [c.hit for c in used], statistic, n_resamples=n_resamples, confidence=CONFIDENCE, seed=seed
    )
    numbers = (
        f"from B = {b.min():g} to {b.max():g} hit TTFT changes by {_pct(share.estimate)} "
        f"({CONFIDENCE:.0%} CI {_pct_ci(share)}) of its level ({_num(level.estimate, '.4g')} ms, "
        f"mean of the configurations' medians): slope {_num(slope.estimate, '.3g')} ms/token "
        f"({_ci(slope.low, slope.high, '.3g')}) through the median hit TTFT of {len(used)} "
        f"configurations ({sum(c.hit.size for c in used)} trials"
        f"{_aside(aside)})."
    )
    status, why = _hit_constant_outcome(share)
    evidence = {
        "slope_ms_per_token": slope.estimate,
        "slope_ci_low": slope.low,
        "slope_ci_high": slope.high,
        "change_share": share.estimate,
        "change_share_ci_low": share.low,
        "change_share_ci_high": share.high,
        "predicted_change_ms": slope.estimate * span,
        "hit_level_ms": level.estimate,
        "b_range": span,
        "n_configs": float(len(used)),
        "n_set_aside": float(aside),
    }
    reason = f"{numbers} {why} {rule}"
    return Verdict("hit_constant", HIT_CONSTANT_CLAIM, status, reason, evidence)


def _hit_constant_outcome(share: stats.Interval) -> tuple[str, str]:
    """Claim 1's status and why, from the change of hit TTFT over the B range as a share
    of its level: an equivalence test within ±HIT_CONSTANT_MAX_CHANGE."""
    margin = HIT_CONSTANT_MAX_CHANGE
    if not _finite(share.low, share.high):
        why = "Undetermined: the interval is not defined (a configuration has under 2 trials)."
        return UNDETERMINED, why
    if -margin < share.low and share.high < margin:
        return SUPPORTED, f"Supported: the whole CI lies within ±{margin:.0%}."
    if (share.low > 0 or share.high < 0) and abs(share.estimate) >= margin:
        why = f"Not supported: the CI excludes 0 and the change is at least {margin:.0%}."
        return NOT_SUPPORTED, why
    why = f"Undetermined: the data neither bound the change within ±{margin:.0%} nor show it."
    return UNDETERMINED, why


# --------------------------------------------------------------------------- claim 2


MISS_LINEAR_CLAIM = "Cache-miss TTFT grows linearly with B (the tokens recomputed)"


def _verdict_miss_linear(configs: list[Configuration], *, n_resamples: int, seed: int) -> Verdict:
    """Claim 2: a rising line, with a bounded bow and no lack of fit beyond the repeats."""
    margin = MISS_LINEAR_MAX_BOW
    rule = (
        f"Rule: supported when the slope's {CONFIDENCE:.0%} CI lies above 0, the bow's CI "
        f"lies within ±{margin:.0%} of the rise and the line is not rejected; not supported "
        f"when the slope's CI lies "
        f"at or below 0, or when the line is rejected (lack-of-fit p < {ALPHA:g}, or the "
        f"bow's CI excludes 0) and the bow is at least {margin:.0%}; otherwise undetermined."
    )
    used = [c for c in configs if c.miss.size]
    x = np.array([c.x_miss for c in used])  # floats: medians, or B as a float
    distinct = np.unique(x).size
    if distinct < MISS_LINEAR_MIN_POINTS:
        reason = (
            f"not enough configurations: {distinct} distinct numbers of tokens recomputed, "
            f"a test of linearity needs at least {MISS_LINEAR_MIN_POINTS}. {rule}"
        )
        return Verdict("miss_linear", MISS_LINEAR_CLAIM, UNDETERMINED, reason)
    span = float(x.max() - x.min())

    def statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        slope, bow = stats.line_and_bow(x, _medians(samples, axis))
        return np.stack([slope, bow, bow / (slope * span)])

    slope, bow, share = stats.stratified_bootstrap(
        [c.miss for c in used], statistic, n_resamples=n_resamples, confidence=CONFIDENCE, seed=seed
    )
    trials_x = np.concatenate([np.full(c.miss.size, c.x_miss) for c in used])
    lof = stats.lack_of_fit(trials_x, np.concatenate([c.miss for c in used]))
    numbers = (
        f"through the median miss TTFT of {len(used)} configurations at {distinct} token "
        f"counts ({x.min():g} to {x.max():g}, {trials_x.size} trials"
        f"{_aside(sum(c.set_aside[1] for c in used))}): slope "
        f"{_num(slope.estimate, '.4g')} ms/token ({CONFIDENCE:.0%} CI "
        f"{_ci(slope.low, slope.high, '.4g')}); the parabola's bow is {_pct(share.estimate)} "
        f"of the line's rise over the range (CI {_pct_ci(share)}; "
        f"{_num(bow.estimate, '+.3g')} ms); lack-of-fit F = {_num(lof.f, '.3g')} "
        f"on {_num(lof.df_num, 'g')} and {_num(lof.df_den, 'g')} df, p = {_num(lof.p, '.2g')}."
    )
    status, why = _miss_linear_outcome(slope, share, lof.p)
    evidence = {
        "slope_ms_per_token": slope.estimate,
        "slope_ci_low": slope.low,
        "slope_ci_high": slope.high,
        "bow_ms": bow.estimate,
        "bow_share": share.estimate,
        "bow_share_ci_low": share.low,
        "bow_share_ci_high": share.high,
        "lack_of_fit_f": lof.f,
        "lack_of_fit_p": lof.p,
        "n_points": float(distinct),
        "n_set_aside": float(sum(c.set_aside[1] for c in used)),
    }
    reason = f"{numbers} {why} {rule}"
    return Verdict("miss_linear", MISS_LINEAR_CLAIM, status, reason, evidence)


def _miss_linear_outcome(
    slope: stats.Interval, share: stats.Interval, lack_of_fit_p: float
) -> tuple[str, str]:
    """Claim 2's status and why, from the slope, the bow as a share of the line's rise
    (bounded by ±MISS_LINEAR_MAX_BOW) and the lack-of-fit test's p-value.

    The F test assumes normal errors of equal spread; timings vary multiplicatively and
    keep the milder hiccups, so the bow's bootstrap interval (which assumes neither) may
    reject the line as well."""
    margin = MISS_LINEAR_MAX_BOW
    rejected = (_finite(lack_of_fit_p) and lack_of_fit_p < ALPHA) or share.low > 0 or share.high < 0
    if _finite(slope.high) and slope.high <= 0:
        return NOT_SUPPORTED, "Not supported: miss TTFT does not grow with B."
    if not _finite(slope.low, share.low, share.high):
        why = "Undetermined: an interval is not defined (a configuration has under 2 trials)."
        return UNDETERMINED, why
    if slope.low > 0 and -margin < share.low and share.high < margin and not rejected:
        return SUPPORTED, (
            f"Supported: the slope is positive, the bow's CI lies within ±{margin:.0%} and "
            "the line fits."
        )
    if rejected and abs(share.estimate) >= margin:
        why = f"Not supported: the line does not fit and the bow is at least {margin:.0%}."
        return NOT_SUPPORTED, why
    if rejected:
        return UNDETERMINED, (
            f"Undetermined: the line does not fit, but the bow stays under {margin:.0%} of "
            "the rise."
        )
    why = f"Undetermined: the data neither bound the bow within ±{margin:.0%} nor show it."
    return UNDETERMINED, why


# --------------------------------------------------------------------------- claim 3


DECODE_CLAIM = "Decode throughput is unaffected by cache state"


def _verdict_decode(configs: list[Configuration], *, n_resamples: int, seed: int) -> Verdict:
    """Claim 3, as an equivalence test on the ratio of median decode tok/s miss / hit."""
    low, high = DECODE_RATIO_BOUNDS
    rule = (
        f"Rule: supported when the whole {CONFIDENCE:.0%} CI lies within [{low:.2f}, "
        f"{high:.2f}]; not supported when the CI excludes 1 and the ratio lies outside those "
        "bounds; otherwise undetermined."
    )
    used = [c for c in configs if c.hit_decode.size and c.miss_decode.size]
    if not used:
        reason = f"no decode throughput (decode_tok_s) was recorded for both conditions. {rule}"
        return Verdict("decode_unaffected", DECODE_CLAIM, UNDETERMINED, reason)
    k = len(used)
    aside = sum(c.set_aside[2] + c.set_aside[3] for c in used)

    def statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        hit = np.median(np.concatenate(samples[:k], axis=axis), axis=axis)
        return np.median(np.concatenate(samples[k:], axis=axis), axis=axis) / hit

    ratio = stats.stratified_bootstrap(
        [c.hit_decode for c in used] + [c.miss_decode for c in used],
        statistic,
        n_resamples=n_resamples,
        confidence=CONFIDENCE,
        seed=seed,
    )[0]
    numbers = (
        f"median decode tok/s miss / hit = {_num(ratio.estimate, '.3f')} "
        f"({CONFIDENCE:.0%} CI {_ci(ratio.low, ratio.high, '.3f')}, trials resampled within "
        f"each of {k} configurations{_aside(aside)}), all configurations pooled."
    )
    status, why = _decode_outcome(ratio)
    if status != SUPPORTED and ratio.estimate > 1:
        why += (
            " Note: a miss decodes with A's tokens gone from its context, so each decoded "
            "token attends over fewer cached tokens; a faster miss reflects context length "
            "rather than the cache state itself."
        )
    evidence = {
        "ratio": ratio.estimate,
        "ratio_ci_low": ratio.low,
        "ratio_ci_high": ratio.high,
        "n_set_aside": float(aside),
    }
    reason = f"{numbers} {why} {rule}"
    return Verdict("decode_unaffected", DECODE_CLAIM, status, reason, evidence)


def _decode_outcome(ratio: stats.Interval) -> tuple[str, str]:
    """Claim 3's status and why, from the pooled ratio of median decode tok/s miss / hit:
    an equivalence test within DECODE_RATIO_BOUNDS."""
    low, high = DECODE_RATIO_BOUNDS
    bounds = f"[{low:.2f}, {high:.2f}]"
    if not _finite(ratio.low, ratio.high):
        why = "Undetermined: the interval is not defined (a configuration has under 2 trials)."
        return UNDETERMINED, why
    if low <= ratio.low and ratio.high <= high:
        return SUPPORTED, f"Supported: the whole CI lies within {bounds}."
    if (ratio.low > 1 or ratio.high < 1) and not low <= ratio.estimate <= high:
        return (
            NOT_SUPPORTED,
            f"Not supported: the CI excludes 1 and the ratio lies outside {bounds}.",
        )
    why = f"Undetermined: the data neither bound the ratio within {bounds} nor show it outside."
    return UNDETERMINED, why
