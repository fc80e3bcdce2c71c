"""Statistics behind every number and verdict in the summary.

The seed reported bare medians of ten wall-clock trials. Ten trials are too few to
trust a median without an interval, so each estimate here comes with one: a
percentile bootstrap for medians and ratios of medians (no distributional
assumption; TTFT distributions are skewed by scheduler noise) and the t distribution
for least-squares slopes. Everything is a pure function of arrays or DataFrames, so
that the tests can check it against hand-computed values and the summary can be
rebuilt from the CSVs alone.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

#: Resamples per bootstrap; 10,000 keeps the Monte Carlo error of a 95% bound small.
DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95
#: A fixed seed makes every interval in the summary reproducible from the CSVs.
DEFAULT_SEED = 20_240_611
#: Resamples are drawn in blocks so that large pooled samples do not need a huge matrix.
_BLOCK = 2_000

ArrayLike = Sequence[float] | np.ndarray | pd.Series


@dataclass(frozen=True)
class Interval:
    """A point estimate with the bounds of its confidence interval (NaN when undefined)."""

    estimate: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies inside the interval; False when the interval is undefined."""
        return bool(self.low <= value <= self.high)


@dataclass(frozen=True)
class MannWhitney:
    """Mann-Whitney U of the first sample against the second, and its two-sided p-value."""

    u: float
    p: float


@dataclass(frozen=True)
class LineFit:
    """An ordinary least-squares line ``y = slope * x + intercept`` and its uncertainty.

    ``slope_se`` and the slope interval need at least three points (one residual degree
    of freedom); ``r_squared`` is NaN when ``y`` does not vary.
    """

    slope: float
    intercept: float
    r_squared: float
    slope_se: float
    slope_ci_low: float
    slope_ci_high: float
    n: int

    @property
    def slope_interval(self) -> Interval:
        """The slope as an :class:`Interval`, for the same checks as the bootstrap results."""
        return Interval(self.slope, self.slope_ci_low, self.slope_ci_high)


NAN_FIT = LineFit(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0)


def clean(values: ArrayLike) -> np.ndarray:
    """Return the finite values as a float array: a failed trial must not poison a median."""
    arr = np.asarray(values, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def median(values: ArrayLike) -> float:
    """Median of the finite values, NaN for an empty sample."""
    arr = clean(values)
    return float(np.median(arr)) if arr.size else math.nan


def describe(values: ArrayLike) -> dict[str, float]:
    """n, median, mean and sample standard deviation (ddof=1, NaN below two values)."""
    arr = clean(values)
    return {
        "n": float(arr.size),
        "median": float(np.median(arr)) if arr.size else math.nan,
        "mean": float(np.mean(arr)) if arr.size else math.nan,
        "std": float(np.std(arr, ddof=1)) if arr.size >= 2 else math.nan,
    }


def _resampled_medians(arr: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of ``n_resamples`` resamples with replacement of ``arr``."""
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, _BLOCK):
        stop = min(start + _BLOCK, n_resamples)
        idx = rng.integers(0, arr.size, size=(stop - start, arr.size))
        out[start:stop] = np.median(arr[idx], axis=1)
    return out


def _percentile_bounds(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile-bootstrap bounds of ``draws`` at ``confidence``."""
    alpha = 1.0 - confidence
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def median_ci(
    values: ArrayLike,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """Median with its percentile-bootstrap confidence interval.

    With fewer than two values there is no sampling variability to resample, so the
    bounds are NaN rather than a misleading zero-width interval.
    """
    arr = clean(values)
    if arr.size < 2:
        return Interval(median(arr), math.nan, math.nan)
    draws = _resampled_medians(arr, n_resamples, np.random.default_rng(seed))
    return Interval(float(np.median(arr)), *_percentile_bounds(draws, confidence))


def degradation_pct(hit: ArrayLike, miss: ArrayLike) -> float:
    """The seed's degradation: (median miss - median hit) / median hit * 100."""
    return _degradation(median(hit), median(miss))


def _degradation(hit_median: float | np.ndarray, miss_median: float | np.ndarray):
    """Degradation from medians; works elementwise on arrays of bootstrap medians."""
    with np.errstate(divide="ignore", invalid="ignore"):  # np.divide: a zero hit gives inf
        return np.divide(miss_median - hit_median, hit_median) * 100.0


def _ratio(hit_median: float | np.ndarray, miss_median: float | np.ndarray):
    """miss / hit from medians; works elementwise on arrays of bootstrap medians."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(miss_median, hit_median)


def _two_sample_ci(
    hit: ArrayLike,
    miss: ArrayLike,
    statistic: Callable,
    *,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> Interval:
    """Bootstrap a statistic of (median hit, median miss), resampling each independently.

    The two conditions are independent trials, so they are resampled separately; a
    paired resample would invent a pairing the design does not have.
    """
    h, m = clean(hit), clean(miss)
    if h.size == 0 or m.size == 0:
        return Interval(math.nan, math.nan, math.nan)
    estimate = float(statistic(float(np.median(h)), float(np.median(m))))
    if h.size < 2 or m.size < 2:
        return Interval(estimate, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    hit_draws = _resampled_medians(h, n_resamples, rng)
    draws = statistic(hit_draws, _resampled_medians(m, n_resamples, rng))
    return Interval(estimate, *_percentile_bounds(np.asarray(draws), confidence))


def degradation_ci(
    hit: ArrayLike,
    miss: ArrayLike,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """Degradation % with a bootstrap interval (hit and miss resampled independently)."""
    return _two_sample_ci(
        hit, miss, _degradation, n_resamples=n_resamples, confidence=confidence, seed=seed
    )


def ratio_ci(
    hit: ArrayLike,
    miss: ArrayLike,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """median(miss) / median(hit) with a bootstrap interval, e.g. for decode throughput."""
    return _two_sample_ci(
        hit, miss, _ratio, n_resamples=n_resamples, confidence=confidence, seed=seed
    )


def mann_whitney(hit: ArrayLike, miss: ArrayLike) -> MannWhitney:
    """Two-sided Mann-Whitney U of hit against miss TTFT.

    A rank test, because wall-clock TTFT has outliers that a t-test would overweight.
    ``u`` is the U statistic of the hit sample (pairs where hit > miss, ties count 1/2).
    """
    h, m = clean(hit), clean(miss)
    if h.size == 0 or m.size == 0:
        return MannWhitney(math.nan, math.nan)
    res = sps.mannwhitneyu(h, m, alternative="two-sided")
    return MannWhitney(float(res.statistic), float(res.pvalue))


def fit_line(x: ArrayLike, y: ArrayLike, *, confidence: float = DEFAULT_CONFIDENCE) -> LineFit:
    """Ordinary least squares of y on x, with the slope's standard error and t interval.

    Pairs where either value is not finite are dropped. Fewer than two distinct x values
    cannot define a line, so the result is all NaN.
    """
    xa, ya = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    if np.unique(xa).size < 2:
        return LineFit(*([math.nan] * 6), n=int(xa.size))
    dx, dy = xa - xa.mean(), ya - ya.mean()
    sxx = float(dx @ dx)
    slope = float(dx @ dy) / sxx
    intercept = float(ya.mean() - slope * xa.mean())
    sse = float(np.sum((ya - (slope * xa + intercept)) ** 2))
    sst = float(dy @ dy)
    r_squared = 1.0 - sse / sst if sst > 0 else math.nan
    se, low, high = _slope_uncertainty(sse, sxx, xa.size, slope, confidence)
    return LineFit(slope, intercept, r_squared, se, low, high, n=int(xa.size))


def _slope_uncertainty(
    sse: float, sxx: float, n: int, slope: float, confidence: float
) -> tuple[float, float, float]:
    """Standard error of the slope and its t-distribution interval (NaN when n < 3)."""
    dof = n - 2
    if dof < 1:
        return math.nan, math.nan, math.nan
    se = math.sqrt(sse / dof / sxx)
    t_crit = float(sps.t.ppf(0.5 + confidence / 2, dof))
    return se, slope - t_crit * se, slope + t_crit * se


def _condition(df: pd.DataFrame, condition: str) -> pd.DataFrame:
    """The rows of one condition ("hit" or "miss")."""
    return df[df["condition"] == condition]


def fit_miss_ttft_vs_recomputed(df: pd.DataFrame) -> LineFit:
    """Miss TTFT (ms) against tokens recomputed, over every miss trial of every configuration.

    The slope is the marginal cost of recomputing one token; the seed's "linear in B"
    claim is that this line fits.
    """
    miss = _condition(df, "miss")
    return fit_line(miss["tokens_recomputed"], miss["ttft_ms"])


def fit_prefill_vs_recomputed(df: pd.DataFrame) -> LineFit:
    """llama.cpp's prefill ms against tokens recomputed, over every miss trial.

    Same points as :func:`fit_miss_ttft_vs_recomputed` but without the harness's
    overhead, so the two slopes should agree if the overhead does not grow with B.
    """
    miss = _condition(df, "miss")
    return fit_line(miss["tokens_recomputed"], miss["ttft_prefill_ms"])


def fit_hit_ttft_vs_b(df: pd.DataFrame) -> LineFit:
    """Hit TTFT (ms) against size_b over every hit trial: the seed says the slope is zero."""
    hit = _condition(df, "hit")
    return fit_line(hit["size_b"], hit["ttft_ms"])


def decode_ratio(df: pd.DataFrame, **bootstrap: float) -> Interval:
    """Median decode throughput of miss over hit, with a bootstrap interval.

    Uses ``decode_tok_s`` (decoding alone), since the seed's ``throughput_tok_s`` also
    contains prefill and would show the cache effect by construction.
    """
    hit, miss = _condition(df, "hit"), _condition(df, "miss")
    return ratio_ci(hit["decode_tok_s"], miss["decode_tok_s"], **bootstrap)


def prefill_tok_s(df: pd.DataFrame) -> float:
    """Prefill throughput: sum of TTFT prefill tokens / sum of TTFT prefill seconds.

    A ratio of sums, not a mean of ratios, so that long prefills (the informative ones)
    weigh in proportion to their duration. NaN when there is no prefill time.
    """
    tokens = pd.to_numeric(df["ttft_prefill_tokens"], errors="coerce")
    ms = pd.to_numeric(df["ttft_prefill_ms"], errors="coerce")
    keep = tokens.notna() & ms.notna()
    total_ms = float(ms[keep].sum())
    return float(tokens[keep].sum()) / total_ms * 1000.0 if total_ms > 0 else math.nan


# --------------------------------------------------------------------------- verdict statistics
#
# The verdicts compare configurations. Trials within one configuration are repeats of the
# same measurement, not independent points along B, so the functions below treat the
# configuration as the unit: a location per configuration (a median, robust to the
# shared machine's occasional 1.5-3x slow trials), intervals from a bootstrap that
# resamples trials within each configuration independently (a stratified bootstrap), and
# shapes (slope, curvature) fitted through the configurations' locations.


@dataclass(frozen=True)
class LackOfFit:
    """Lack-of-fit F test of a straight line against one mean per distinct x.

    ``f`` compares the scatter of the x-group means around the line with the scatter of
    the repeats around their own group mean (the pure error); ``p`` is its upper tail.
    """

    f: float
    p: float
    df_num: float
    df_den: float


NAN_LACK_OF_FIT = LackOfFit(math.nan, math.nan, math.nan, math.nan)
#: The normal distribution's upper quartile: MAD / this estimates a normal sigma.
_NORMAL_Q3 = float(sps.norm.ppf(0.75))


def stratified_bootstrap(
    samples: Sequence[ArrayLike],
    statistic: Callable[..., np.ndarray],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> list[Interval]:
    """Percentile-bootstrap intervals of a statistic of several independent samples.

    Each sample (e.g. the trials of one configuration and condition) is resampled on its
    own, with replacement and at its own size: :func:`scipy.stats.bootstrap` with one
    sample per stratum does exactly that. ``statistic(*samples, axis=-1)`` must be
    vectorised along ``axis`` and return one value, or a stack of values (first axis),
    per resample; the result is one :class:`Interval` per value, in that order.

    The estimates are the statistic of the samples themselves (NaN when a sample is
    empty). The bounds are NaN when a sample has fewer than two finite values (a single
    trial has no spread to resample) or when the statistic is undefined (NaN) in any
    resample, so that an interval that cannot be trusted is never mistaken for a narrow
    one.
    """
    arrays = [clean(s) for s in samples]
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the median of an empty sample
        try:
            estimates = np.atleast_1d(np.asarray(statistic(*arrays, axis=-1), dtype=float))
        except (ValueError, IndexError):  # a statistic that refuses an empty sample
            estimates = np.array([math.nan])
    if any(a.size == 0 for a in arrays):
        return [Interval(math.nan, math.nan, math.nan) for _ in estimates]
    if any(a.size < 2 for a in arrays):
        return [Interval(float(e), math.nan, math.nan) for e in estimates]
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples: handled below, as NaN
        res = sps.bootstrap(
            arrays,
            statistic,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    lows = np.atleast_1d(np.asarray(res.confidence_interval.low, dtype=float))
    highs = np.atleast_1d(np.asarray(res.confidence_interval.high, dtype=float))
    draws = np.asarray(res.bootstrap_distribution, dtype=float).reshape(estimates.size, -1)
    undefined = np.isnan(draws).any(axis=1)
    return [
        Interval(float(e), math.nan, math.nan) if bad else Interval(float(e), float(lo), float(hi))
        for e, lo, hi, bad in zip(estimates, lows, highs, undefined, strict=True)
    ]


def line_and_bow(x: ArrayLike, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope of the least-squares line and bow of the least-squares parabola through (x, y).

    ``y`` may carry leading axes (one row per bootstrap resample); the last axis matches
    ``x``. The bow is the parabola's largest distance from its chord over the range of
    x, ``c * R² / 4`` for ``y = a + b x + c x²`` and ``R = max(x) - min(x)``, signed:
    positive when the curve bends upwards (each extra token costs more than the last).
    The bow is NaN with fewer than three distinct x values, the slope with fewer than two.
    """
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    distinct = np.unique(xa).size
    nan = np.full(ya.shape[:-1], math.nan)
    if distinct < 2:
        return nan, nan
    span = float(xa.max() - xa.min())
    t = (xa - (xa.max() + xa.min()) / 2) / span  # in [-1/2, 1/2]: well conditioned
    dt = t - t.mean()
    slope = (ya @ dt) / float(dt @ dt) / span
    if distinct < 3:
        return slope, nan
    design = np.column_stack([np.ones_like(t), t, t * t])
    coefs = ya @ np.linalg.pinv(design).T
    return slope, coefs[..., 2] / 4.0  # over t's unit range, c * R² / 4 = c_t / 4


def lack_of_fit(x: ArrayLike, y: ArrayLike) -> LackOfFit:
    """Lack-of-fit F test of y = a + b x, with the pure error from repeats at each x.

    The straight line is compared with the model that gives every distinct x its own
    mean (statsmodels' nested-model F test): a small ``p`` says the group means do not
    lie on a line, beyond what the repeats' scatter explains. Needs three distinct x
    values and at least one repeat; NaN otherwise (and when the repeats do not vary).
    """
    import statsmodels.api as sm  # deferred: only the verdicts need it

    xa, ya = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    levels, groups = np.unique(xa, return_inverse=True)
    if levels.size < 3 or ya.size <= levels.size:
        return NAN_LACK_OF_FIT
    cell_means = sm.OLS(ya, np.eye(levels.size)[groups]).fit()
    if not cell_means.ssr > 1e-12 * float(np.sum((ya - ya.mean()) ** 2)):
        return NAN_LACK_OF_FIT  # no pure error (up to rounding): F is undefined
    line = sm.OLS(ya, sm.add_constant(xa)).fit()
    f, p, df_num = cell_means.compare_f_test(line)
    return LackOfFit(float(f), float(p), float(df_num), float(cell_means.df_resid))


def slow_outliers(values: ArrayLike, *, k: float, slow: str = "high", min_n: int = 5) -> np.ndarray:
    """Mask of the trials far slower than the rest of their sample (a shared machine's hiccups).

    On the log scale (timings vary multiplicatively), a value is flagged when it lies
    more than ``k`` robust standard deviations (the normal-consistent median absolute
    deviation, :func:`scipy.stats.median_abs_deviation`) beyond the sample's median on
    the slow side: above it when ``slow`` is "high" (a time), below it when "low" (a
    throughput). Fast values are never flagged. Samples under ``min_n`` values, and
    samples whose MAD is 0, flag nothing: their spread cannot be estimated.
    """
    arr = np.asarray(values, dtype=float).ravel()
    flags = np.zeros(arr.size, dtype=bool)
    positive = np.isfinite(arr) & (arr > 0)
    if positive.sum() < min_n:
        return flags
    logs = np.log(arr[positive])
    center = np.median(logs)
    # scipy.stats.median_abs_deviation(logs, scale="normal"), without its per-call overhead
    scale = float(np.median(np.abs(logs - center))) / _NORMAL_Q3
    if not scale > 0:
        return flags
    distance = (logs - center) / scale
    flags[positive] = (distance if slow == "high" else -distance) > k
    return flags


def mann_whitney_greater(lower: ArrayLike, higher: ArrayLike) -> float:
    """One-sided Mann-Whitney p-value that ``higher`` tends to exceed ``lower``.

    NaN when either sample is empty. scipy picks the exact null distribution for small
    samples without ties and the normal approximation otherwise.
    """
    return float(mann_whitney_greater_each([lower], [higher])[0])


def mann_whitney_greater_each(
    lowers: Sequence[ArrayLike], highers: Sequence[ArrayLike]
) -> np.ndarray:
    """:func:`mann_whitney_greater` of each pair (lowers[i], highers[i]).

    Pairs of the same sizes above 8 (where scipy always uses the normal approximation)
    go through one vectorised call; the p-values are those of one call per pair.
    """
    out = np.full(len(lowers), math.nan)
    batches: dict[tuple[int, int], list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for i, (lower, higher) in enumerate(zip(lowers, highers, strict=True)):
        lo, hi = clean(lower), clean(higher)
        if lo.size == 0 or hi.size == 0:
            continue
        key = (lo.size, hi.size) if lo.size > 8 and hi.size > 8 else (-1 - i, 0)
        batches.setdefault(key, []).append((i, lo, hi))
    for batch in batches.values():
        index = [i for i, _, _ in batch]
        his = np.stack([hi for _, _, hi in batch])
        los = np.stack([lo for _, lo, _ in batch])
        out[index] = sps.mannwhitneyu(his, los, alternative="greater", axis=-1).pvalue
    return out


def holm_sidak(pvalues: ArrayLike) -> np.ndarray:
    """Holm-Šidák step-down adjusted p-values, for a family error rate of the level.

    statsmodels' ``multipletests(method="hs")``: Holm's step-down procedure with Šidák's
    per-step levels, exact for independent tests (the configurations' trials are
    independent) and never more conservative than Holm's. (Its plain ``"holm"`` branch
    runs a full garbage collection on every call, half a second in a loaded process.)
    NaN p-values stay NaN and do not count in the family.
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    finite = np.isfinite(p)
    if finite.any():
        with np.errstate(divide="ignore"):  # a p-value of 1 stays 1
            out[finite] = multipletests(p[finite], method="hs")[1]
    return out
