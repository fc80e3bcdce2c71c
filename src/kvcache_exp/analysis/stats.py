"""Statistics behind every number and verdict in the summary.

The seed reported bare medians of ten wall-clock trials. Ten trials are too few to
trust a median without an interval, so each estimate here comes with one. There is one
bootstrap, :func:`stratified_bootstrap` (scipy's percentile bootstrap, each sample
resampled on its own), with one resample count (:data:`RESAMPLES`), one seed
(:data:`SEED`) and one confidence level (:data:`CONFIDENCE`): the medians' intervals,
the ratios of medians, the cures' shares and every verdict's interval come from it, so
the same quantity always gets the same interval. No distributional assumption is made:
TTFT distributions are skewed by scheduler noise. Least-squares slopes get the t
distribution's interval (:func:`fit_line`). The one rule for slow outliers is
:func:`slow_outliers`; :mod:`.trials` applies it. Everything is a pure function of
arrays or DataFrames, so that the tests can check it against hand-computed values and
the summary can be rebuilt from the CSVs alone. It is one module of about 440 lines, a
little over the package's usual size, so that every statistical method behind the
summary can be checked in one place (and the figures, which need only a few of them, do
not depend on the verdicts' modules).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

#: Resamples per bootstrap: 10,000 keeps the Monte Carlo error of a 95% bound small, and a
#: whole summary still takes well under a second.
RESAMPLES = 10_000
#: Confidence of every interval, bootstrap or t.
CONFIDENCE = 0.95
#: A fixed seed makes every interval in the summary reproducible from the CSVs.
SEED = 20_240_611
#: Resamples drawn at once: bounds the bootstrap's memory for large pooled samples.
_BATCH = 2_000

ArrayLike = Sequence[float] | np.ndarray | pd.Series


@dataclass(frozen=True)
class Interval:
    """A point estimate with the bounds of its confidence interval (NaN when undefined)."""

    estimate: float
    low: float
    high: float


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


def stratified_bootstrap(
    samples: Sequence[ArrayLike],
    statistic: Callable[..., np.ndarray],
    *,
    n_resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> list[Interval]:
    """Percentile-bootstrap intervals of a statistic of several independent samples: the
    one bootstrap behind every interval of the summary but the line fits' slopes.

    Each sample (e.g. the trials of one configuration and condition) is resampled on its
    own, with replacement and at its own size: :func:`scipy.stats.bootstrap` with one
    sample per stratum does exactly that. ``statistic(*samples, axis=-1)`` must be
    vectorised along ``axis`` and return one value, or a stack of values (first axis),
    per resample; the result is one :class:`Interval` per value, in that order.

    The estimates are the statistic of the samples themselves (NaN when a sample is
    empty). The bounds are NaN when a sample has fewer than two finite values (a single
    trial has no spread to resample) or when the statistic is not finite in any resample
    (e.g. a ratio over a median of 0), so that an interval that cannot be trusted is never
    mistaken for a narrow one, nor an infinite one reported.
    """
    arrays = [clean(s) for s in samples]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the median of an empty sample, a division by 0
        try:
            estimates = np.atleast_1d(statistic(*arrays, axis=-1))
        except (ValueError, IndexError):  # a statistic that refuses an empty sample
            estimates = np.array([math.nan])
    if any(a.size == 0 for a in arrays):
        return [Interval(math.nan, math.nan, math.nan) for _ in estimates]
    if any(a.size < 2 for a in arrays):
        return [Interval(float(e), math.nan, math.nan) for e in estimates]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples: handled below, as NaN bounds
        res = sps.bootstrap(
            arrays,
            statistic,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            batch=_BATCH,
            rng=np.random.default_rng(seed),
        )
    lows = np.atleast_1d(res.confidence_interval.low)
    highs = np.atleast_1d(res.confidence_interval.high)
    draws = np.reshape(res.bootstrap_distribution, (estimates.size, -1))
    undefined = ~np.isfinite(draws).all(axis=1)
    return [
        Interval(float(e), math.nan, math.nan) if bad else Interval(float(e), float(lo), float(hi))
        for e, lo, hi, bad in zip(estimates, lows, highs, undefined, strict=True)
    ]


def _median_of(sample: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(sample, axis=axis)


def _ratio_of_medians(hit: np.ndarray, miss: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(miss, axis=axis) / np.median(hit, axis=axis)


def median_ci(
    values: ArrayLike,
    *,
    n_resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Interval:
    """Median with its interval from :func:`stratified_bootstrap` (one sample).

    With fewer than two values there is no sampling variability to resample, so the
    bounds are NaN rather than a misleading zero-width interval.
    """
    return stratified_bootstrap(
        [values], _median_of, n_resamples=n_resamples, confidence=confidence, seed=seed
    )[0]


def ratio_ci(
    hit: ArrayLike,
    miss: ArrayLike,
    *,
    n_resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Interval:
    """median(miss) / median(hit) with its interval from :func:`stratified_bootstrap`.

    The two conditions are independent trials, so each is resampled on its own; a paired
    resample would invent a pairing the design does not have.
    """
    return stratified_bootstrap(
        [hit, miss], _ratio_of_medians, n_resamples=n_resamples, confidence=confidence, seed=seed
    )[0]


def mann_whitney(hit: ArrayLike, miss: ArrayLike) -> MannWhitney:
    """Two-sided Mann-Whitney U of hit against miss TTFT.

    A rank test, because wall-clock TTFT has outliers that a t-test would overweight.
    ``u`` is the U statistic of the hit sample (pairs where hit > miss, ties count 1/2).
    """
    h, m = clean(hit), clean(miss)
    if h.size == 0 or m.size == 0:
        return MannWhitney(math.nan, math.nan)
    res = sps.mannwhitneyu(h, m)  # two-sided, scipy's default
    return MannWhitney(float(res.statistic), float(res.pvalue))


def fit_line(x: ArrayLike, y: ArrayLike, *, confidence: float = CONFIDENCE) -> LineFit:
    """Ordinary least squares of y on x (:func:`scipy.stats.linregress`), with the slope's
    standard error and its t interval.

    Pairs where either value is not finite are dropped. Fewer than two distinct x values
    cannot define a line, so the result is all NaN; two points define one but leave no
    residual degree of freedom, so its standard error and interval are NaN.
    """
    xa, ya = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    if np.unique(xa).size < 2:
        return LineFit(*([math.nan] * 6), n=int(xa.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a flat y: r is undefined, handled below
        res = sps.linregress(xa, ya)
    slope, intercept = float(res.slope), float(res.intercept)
    dof = xa.size - 2
    if dof < 1:  # linregress reports 0 here: there is no residual to estimate it from
        se = math.nan
    elif np.ptp(ya) == 0:  # linregress reports NaN (r is 0/0), but y lies on its line
        se = 0.0
    else:
        se = float(res.stderr)
    t_crit = float(sps.t.ppf(0.5 + confidence / 2, dof))  # NaN at 0 degrees of freedom
    return LineFit(
        slope,
        intercept,
        float(res.rvalue) ** 2,  # NaN when y does not vary
        se,
        slope - t_crit * se,
        slope + t_crit * se,
        n=int(xa.size),
    )


def _condition(df: pd.DataFrame, condition: str) -> pd.DataFrame:
    """The rows of one condition ("hit" or "miss")."""
    return df[df["condition"] == condition]


def fit_miss_ttft_vs_recomputed(df: pd.DataFrame) -> LineFit:
    """Miss TTFT (ms) against tokens recomputed, over the miss trials of every configuration.

    The slope is the marginal cost of recomputing one token; the seed's "linear in B"
    claim is that this line fits.
    """
    miss = _condition(df, "miss")
    return fit_line(miss["tokens_recomputed"], miss["ttft_ms"])


def fit_prefill_vs_recomputed(df: pd.DataFrame) -> LineFit:
    """llama.cpp's prefill ms against tokens recomputed, over the miss trials.

    Same points as :func:`fit_miss_ttft_vs_recomputed` but without the harness's
    overhead, so the two slopes should agree if the overhead does not grow with B.
    """
    miss = _condition(df, "miss")
    return fit_line(miss["tokens_recomputed"], miss["ttft_prefill_ms"])


def fit_hit_ttft_vs_b(df: pd.DataFrame) -> LineFit:
    """Hit TTFT (ms) against size_b over the hit trials: the seed says the slope is zero."""
    hit = _condition(df, "hit")
    return fit_line(hit["size_b"], hit["ttft_ms"])


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


# --------------------------------------------------------------------------- shapes and tests
#
# The verdicts compare configurations. Trials within one configuration are repeats of the
# same measurement, not independent points along B, so the functions below treat the
# configuration as the unit: shapes (slope, curvature) are fitted through the
# configurations' locations, and their intervals come from :func:`stratified_bootstrap`.


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


def line_and_bow(x: ArrayLike, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope of the least-squares line and bow of the least-squares parabola through (x, y).

    ``y`` may carry leading axes (one row per bootstrap resample); the last axis matches
    ``x``. The bow is the parabola's largest distance from its chord over the range of
    x, ``c * R² / 4`` for ``y = a + b x + c x²`` and ``R = max(x) - min(x)``, signed:
    positive when the curve bends upwards (each extra token costs more than the last).
    The bow is NaN with fewer than three distinct x values, the slope with fewer than two.
    """
    xa, ya = np.asarray(x), np.asarray(y)  # numbers: sizes and medians
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


def slow_outliers(values: ArrayLike, *, k: float, slow: str, min_n: int = 5) -> np.ndarray:
    """Mask of the trials far slower than the rest of their sample (a shared machine's hiccups).

    On the log scale (timings vary multiplicatively), a value is flagged when it lies
    more than ``k`` robust standard deviations (the normal-consistent median absolute
    deviation, :func:`scipy.stats.median_abs_deviation`) beyond the sample's median on
    the slow side: above it when ``slow`` is "high" (a time), below it when "low" (a
    throughput). Fast values are never flagged. Samples under ``min_n`` values, and
    samples whose MAD is 0, flag nothing: their spread cannot be estimated.
    """
    if slow not in ("high", "low"):
        raise ValueError(f"slow is 'high' (a time) or 'low' (a throughput), not {slow!r}")
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


def mann_whitney_greater_each(
    lowers: Sequence[ArrayLike], highers: Sequence[ArrayLike]
) -> np.ndarray:
    """One-sided Mann-Whitney p-value that ``highers[i]`` tends to exceed ``lowers[i]``.

    NaN where either sample is empty. scipy picks the exact null distribution for small
    samples without ties and the normal approximation otherwise. Pairs of the same sizes
    above 8 (where scipy always uses the normal approximation) go through one vectorised
    call; the p-values are those of one call per pair.
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
