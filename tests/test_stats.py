"""Statistics, verdicts and the summary files, checked against hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from synthetic import make_results

from kvcache_exp.analysis import stats

# --------------------------------------------------------------------------- descriptive


def test_describe_matches_hand_computation():
    # median of 1,2,3,10 is 2.5; mean 4; squared deviations 9+4+1+36 = 50, /3 -> sd 4.0825
    d = stats.describe([3.0, 1.0, 2.0, 10.0])
    assert d == pytest.approx({"n": 4, "median": 2.5, "mean": 4.0, "std": math.sqrt(50 / 3)})


def test_describe_single_value_has_no_spread_and_ignores_nan():
    d = stats.describe([7.0, math.nan])
    assert d["n"] == 1 and d["median"] == 7.0 and d["mean"] == 7.0
    assert math.isnan(d["std"])


def test_prefill_throughput_is_a_ratio_of_sums():
    df = pd.DataFrame({"ttft_prefill_tokens": [100, 200], "ttft_prefill_ms": [50.0, 150.0]})
    assert stats.prefill_tok_s(df) == pytest.approx(300 / 200 * 1000)  # not mean(2000, 1333)
    assert math.isnan(stats.prefill_tok_s(df.iloc[:0]))


# --------------------------------------------------------------------------- line fits


def test_fit_line_on_exact_linear_data():
    fit = stats.fit_line([1, 2, 3, 4], [3, 5, 7, 9])
    assert (fit.slope, fit.intercept, fit.r_squared) == pytest.approx((2.0, 1.0, 1.0))
    assert fit.slope_se == pytest.approx(0.0, abs=1e-12)
    assert (fit.slope_ci_low, fit.slope_ci_high) == pytest.approx((2.0, 2.0))
    assert fit.n == 4


def test_fit_line_on_hand_computed_noisy_data():
    # x = 0..3, y = 1,3,2,5: Sxx = 5, Sxy = 5.5 -> slope 1.1, intercept 2.75 - 1.65 = 1.1.
    # Residuals -0.1, 0.8, -1.3, 0.6: SSE = 2.7; SST = 8.75 -> R² = 1 - 2.7/8.75.
    # se = sqrt(2.7 / 2 / 5) = sqrt(0.27); t(0.975, 2 dof) = 4.302653.
    fit = stats.fit_line([0, 1, 2, 3], [1, 3, 2, 5])
    se = math.sqrt(0.27)
    assert fit.slope == pytest.approx(1.1)
    assert fit.intercept == pytest.approx(1.1)
    assert fit.r_squared == pytest.approx(1 - 2.7 / 8.75)
    assert fit.slope_se == pytest.approx(se)
    assert fit.slope_ci_low == pytest.approx(1.1 - 4.302653 * se, rel=1e-6)
    assert fit.slope_ci_high == pytest.approx(1.1 + 4.302653 * se, rel=1e-6)


def test_fit_line_is_scipys_linregress():
    x, y = [0.0, 1.0, 2.0, 4.0, 7.0], [1.0, 2.5, 2.0, 6.0, 9.5]
    fit, ref = stats.fit_line(x, y), sps.linregress(x, y)
    assert (fit.slope, fit.intercept, fit.slope_se) == pytest.approx(
        (ref.slope, ref.intercept, ref.stderr)
    )
    assert fit.r_squared == pytest.approx(ref.rvalue**2)
    t_crit = sps.t.ppf(0.975, 3)
    assert fit.slope_ci_low == pytest.approx(ref.slope - t_crit * ref.stderr)


def test_fit_line_degenerate_inputs():
    one_x = stats.fit_line([5, 5, 5], [1, 2, 3])
    assert math.isnan(one_x.slope) and one_x.n == 3
    two = stats.fit_line([0, 1], [1, 3])  # a line, but no residual degrees of freedom
    assert two.slope == pytest.approx(2.0) and math.isnan(two.slope_se)
    assert math.isnan(two.slope_ci_low) and math.isnan(two.slope_ci_high)
    flat = stats.fit_line([0, 1, 2], [4, 4, 4])  # R² undefined when y does not vary
    assert flat.slope == pytest.approx(0.0) and math.isnan(flat.r_squared)
    assert (flat.slope_se, flat.slope_ci_low, flat.slope_ci_high) == (0.0, 0.0, 0.0)
    with_nan = stats.fit_line([0, 1, 2, math.nan], [1, 3, 5, 100])
    assert with_nan.slope == pytest.approx(2.0) and with_nan.n == 3


def test_dataframe_fits_use_the_right_rows_and_columns():
    df = make_results()
    miss = stats.fit_miss_ttft_vs_recomputed(df)
    assert miss.n == 30
    assert miss.slope_ci_low < 0.5 < miss.slope_ci_high  # linear_miss: 0.5 ms/token
    assert miss.r_squared > 0.99
    prefill = stats.fit_prefill_vs_recomputed(df)
    assert prefill.slope == pytest.approx(0.9 * 0.5, rel=0.05)  # prefill is 90% of TTFT
    hit = stats.fit_hit_ttft_vs_b(df)
    assert hit.n == 30 and hit.slope_ci_low <= 0.0 <= hit.slope_ci_high


# --------------------------------------------------------------------------- Mann-Whitney


def test_mann_whitney_u_without_ties():
    # No hit value exceeds a miss value: U = 0. Exact two-sided p = 2 * 1 / C(6, 3) = 0.1.
    res = stats.mann_whitney([1, 2, 3], [4, 5, 6])
    assert res.u == 0.0
    assert res.p == pytest.approx(0.1)


def test_mann_whitney_u_with_a_tie():
    # Pairs with hit > miss: 3>2 (1), 3=3 (0.5), 5>2, 5>3 (2); 1 beats nothing -> U = 3.5.
    assert stats.mann_whitney([1, 3, 5], [2, 3, 6, 7]).u == pytest.approx(3.5)


def test_mann_whitney_empty_sample_is_nan():
    res = stats.mann_whitney([], [1, 2])
    assert math.isnan(res.u) and math.isnan(res.p)


# --------------------------------------------------------------------------- bootstrap


def test_median_ci_contains_the_median_and_is_deterministic():
    values = [28.1, 27.9, 28.4, 30.2, 27.5, 28.0, 29.1, 28.3, 27.8, 28.6]
    first = stats.median_ci(values, seed=1)
    assert first.estimate == pytest.approx(np.median(values))
    assert first.low <= first.estimate <= first.high
    assert min(values) <= first.low and first.high <= max(values)
    assert stats.median_ci(values, seed=1) == first


def test_median_ci_of_two_values_matches_the_resample_distribution():
    # Resampled medians of [1, 2] are 1, 1.5, 2 with probability 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% percentiles are exactly 1 and 2.
    ci = stats.median_ci([1.0, 2.0])
    assert (ci.estimate, ci.low, ci.high) == (1.5, 1.0, 2.0)


def test_median_ci_edge_cases():
    single = stats.median_ci([5.0])
    assert single.estimate == 5.0 and math.isnan(single.low) and math.isnan(single.high)
    constant = stats.median_ci([3.0] * 5)
    assert (constant.low, constant.high) == (3.0, 3.0)
    assert math.isnan(stats.median_ci([]).estimate)


def test_ratio_intervals():
    hit, miss = [27, 28, 29, 28, 28], [149, 150, 151, 150, 152]
    ratio = stats.ratio_ci(hit, miss)
    assert ratio.estimate == pytest.approx(150 / 28)
    assert ratio.low <= ratio.estimate <= ratio.high
    # extremes: 149 / 29 and 152 / 27
    assert ratio.low >= 149 / 29 and ratio.high <= 152 / 27
    assert stats.ratio_ci(hit, miss) == ratio
    same = stats.ratio_ci([200.0] * 4, [100.0] * 4)
    assert (same.estimate, same.low, same.high) == (0.5, 0.5, 0.5)
    lonely = stats.ratio_ci([200.0], [100.0])
    assert lonely.estimate == 0.5 and math.isnan(lonely.low)


def test_median_and_ratio_intervals_are_the_one_bootstrap():
    """The wrappers add nothing to :func:`stats.stratified_bootstrap`: same resamples, same
    seed, so the same interval wherever the same quantity appears."""
    hit, miss = [27.0, 28.5, 29.0, 28.0, 31.0, 27.5], [149.0, 150.0, 155.0, 150.0, 152.0]

    def median(a, axis=-1):
        return np.median(a, axis=axis)

    def ratio(h, m, axis=-1):
        return np.median(m, axis=axis) / np.median(h, axis=axis)

    assert stats.median_ci(hit) == stats.stratified_bootstrap([hit], median)[0]
    assert stats.ratio_ci(hit, miss) == stats.stratified_bootstrap([hit, miss], ratio)[0]
    res = sps.bootstrap(
        [hit, miss],
        ratio,
        n_resamples=stats.RESAMPLES,
        method="percentile",
        batch=2_000,
        rng=np.random.default_rng(stats.SEED),
    )
    got = stats.ratio_ci(hit, miss)
    assert (got.low, got.high) == (res.confidence_interval.low, res.confidence_interval.high)


# --------------------------------------------------------------------------- verdict statistics


def _median_gap(a, b, axis=-1):
    return np.median(b, axis=axis) - np.median(a, axis=axis)


def test_stratified_bootstrap_matches_the_resample_distribution():
    # Resampled medians of [1, 2] are 1, 1.5, 2 with probability 1/4, 1/2, 1/4; [5, 5, 5]
    # always gives 5: the gap is 4, 3.5 or 3, so the 95% bounds are exactly 3 and 4.
    (gap,) = stats.stratified_bootstrap([[1.0, 2.0], [5.0, 5.0, 5.0]], _median_gap)
    assert (gap.estimate, gap.low, gap.high) == (3.5, 3.0, 4.0)
    assert stats.stratified_bootstrap([[1.0, 2.0], [5.0, 5.0, 5.0]], _median_gap) == [gap]


def test_stratified_bootstrap_resamples_each_sample_on_its_own():
    # Paired resampling would always give a - b = 0; independent resampling does not.
    (diff,) = stats.stratified_bootstrap(
        [[0.0, 10.0], [0.0, 10.0]], lambda a, b, axis=-1: a.mean(axis) - b.mean(axis)
    )
    assert diff.estimate == 0.0 and diff.low == -10.0 and diff.high == 10.0


def test_stratified_bootstrap_several_statistics_and_undefined_cases():
    def both(a, b, axis=-1):
        return np.stack([np.median(a, axis=axis), np.median(b, axis=axis)])

    first, second = stats.stratified_bootstrap([[1.0, 2.0], [7.0, 7.0]], both)
    assert (first.low, first.high, second.low, second.high) == (1.0, 2.0, 7.0, 7.0)
    (lonely,) = stats.stratified_bootstrap([[1.0, 2.0], [5.0]], _median_gap)
    assert lonely.estimate == 3.5 and math.isnan(lonely.low) and math.isnan(lonely.high)
    (empty,) = stats.stratified_bootstrap([[1.0, 2.0], [math.nan]], _median_gap)
    assert math.isnan(empty.estimate) and math.isnan(empty.low)
    assert len(stats.stratified_bootstrap([[1.0, 2.0], []], both)) == 2
    # a statistic undefined in some resamples (0 / 0) gives no interval
    (ratio,) = stats.stratified_bootstrap(
        [[0.0, 1.0], [0.0, 1.0]], lambda a, b, axis=-1: a.min(axis) / b.min(axis)
    )
    assert math.isnan(ratio.low) and math.isnan(ratio.high)


def test_line_and_bow_of_exact_parabolas():
    # y = x² on x = 0, 1, 2: least-squares slope 2; c = 1 and R = 2, so the bow is 1.
    slope, bow = stats.line_and_bow([0, 1, 2], np.array([[0.0, 1, 4], [1, 1, 1], [0, -1, -4]]))
    assert slope == pytest.approx([2.0, 0.0, -2.0])
    assert bow == pytest.approx([1.0, 0.0, -1.0], abs=1e-12)
    # uneven x = 0, 1, 3: R = 3, bow = 9 / 4; slope = Sxy / Sxx = (132/9) / (42/9) = 22/7.
    slope, bow = stats.line_and_bow([0, 1, 3], np.array([0.0, 1, 9]))
    assert bow == pytest.approx(2.25) and slope == pytest.approx(22 / 7)
    slope, bow = stats.line_and_bow([0, 1, 0, 1], np.array([1.0, 3, 1, 3]))
    assert slope == pytest.approx(2.0) and math.isnan(bow)
    slope, bow = stats.line_and_bow([5, 5], np.array([1.0, 2.0]))
    assert math.isnan(slope) and math.isnan(bow)


def test_lack_of_fit_hand_computed():
    # Group means 1, 2, 7 at x = 0, 1, 2 (two repeats each, ±1 around the mean).
    # Line: slope 3, intercept 1/3, SSE 34/3; pure error SS 6 on 3 df;
    # lack of fit 34/3 - 6 = 16/3 on 1 df -> F = (16/3) / (6/3) = 8/3.
    lof = stats.lack_of_fit([0, 0, 1, 1, 2, 2], [0, 2, 1, 3, 6, 8])
    assert lof.f == pytest.approx(8 / 3)
    assert (lof.df_num, lof.df_den) == (1.0, 3.0)
    assert lof.p == pytest.approx(sps.f.sf(8 / 3, 1, 3))
    assert math.isnan(stats.lack_of_fit([0, 0, 1, 1], [0, 2, 1, 3]).p)  # 2 distinct x
    assert math.isnan(stats.lack_of_fit([0, 1, 2], [0, 2, 1]).p)  # no repeats
    assert math.isnan(stats.lack_of_fit([0, 0, 1, 1, 2, 2], [1, 1, 2, 2, 7, 7]).f)  # no spread


def test_slow_outliers_flag_only_the_slow_side():
    times = [100.0, 101.0, 99.0, 102.0, 98.0, 100.0, 300.0, 30.0]
    assert stats.slow_outliers(times, k=5, slow="high").tolist() == [False] * 6 + [True, False]
    assert stats.slow_outliers(times, k=5, slow="low").tolist() == [False] * 7 + [True]
    assert not stats.slow_outliers([100.0, 101.0, 300.0, 99.0], k=5, slow="high").any()  # < 5
    assert not stats.slow_outliers([100.0] * 6 + [300.0], k=5, slow="high").any()  # MAD 0
    with pytest.raises(ValueError, match="not 'HIGH'"):
        stats.slow_outliers(times, k=5, slow="HIGH")


def test_mann_whitney_greater_is_one_sided():
    # No hit exceeds a miss: exact one-sided p = 1 / C(6, 3) = 0.05, and 1 the other way.
    p = stats.mann_whitney_greater_each([[1, 2, 3], [4, 5, 6], []], [[4, 5, 6], [1, 2, 3], [1.0]])
    assert p[:2] == pytest.approx([0.05, 1.0]) and math.isnan(p[2])
    # Samples above 8 go through one vectorised call, with the p-values of one call each.
    rng = np.random.default_rng(0)
    lows, highs = rng.normal(size=(3, 9)), rng.normal(0.5, size=(3, 9))
    each = [
        sps.mannwhitneyu(h, lo, alternative="greater").pvalue
        for lo, h in zip(lows, highs, strict=True)
    ]
    assert stats.mann_whitney_greater_each(list(lows), list(highs)) == pytest.approx(each)


def test_holm_sidak_hand_computed():
    # Sorted 0.01, 0.03, 0.04: 1 - 0.99³, 1 - 0.97², 1 - 0.96, then running maximum.
    first, second = 1 - 0.99**3, 1 - 0.97**2
    assert stats.holm_sidak([0.01, 0.04, 0.03]) == pytest.approx([first, second, second])
    adjusted = stats.holm_sidak([math.nan, 0.01, 1.0])
    assert math.isnan(adjusted[0]) and adjusted[1:] == pytest.approx([1 - 0.99**2, 1.0])


def test_a_zero_hit_median_gives_an_undefined_interval_not_a_crash():
    """E.g. a decode rate of 0 tok/s: the ratio is not finite, and has no interval."""
    got = stats.ratio_ci([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])
    assert math.isinf(got.estimate) and math.isnan(got.low) and math.isnan(got.high)
    # Only some resamples infinite (a hit of 0 drawn three times): no interval either.
    some = stats.ratio_ci([0.0, 1.0, 2.0], [1.0, 2.0, 3.0])
    assert some.estimate == 2.0 and math.isnan(some.low) and math.isnan(some.high)


def test_intervals_are_95_percent_ones():
    """A sample wide enough that the 90% and 95% percentile bounds differ: every interval
    is scipy's 95% percentile bootstrap (the 2.5% and 97.5% points of the resampled
    medians), never a narrower one."""
    values = [float(v) for v in range(1, 42)]  # 41 distinct values: many resampled medians

    def median(a, axis=-1):
        return np.median(a, axis=axis)

    def bounds(level: float) -> tuple[float, float]:
        res = sps.bootstrap(
            [values],
            median,
            n_resamples=stats.RESAMPLES,
            confidence_level=level,
            method="percentile",
            batch=2_000,
            rng=np.random.default_rng(stats.SEED),
        )
        return (res.confidence_interval.low, res.confidence_interval.high)

    assert bounds(0.95) != bounds(0.90)  # the sample can tell the levels apart
    got = stats.median_ci(values)
    assert (got.low, got.high) == bounds(0.95)
    (strat,) = stats.stratified_bootstrap([values], median)
    assert (strat.low, strat.high) == bounds(0.95)


def test_a_line_through_values_read_as_objects():
    """Columns read with a missing cell arrive as objects (None among numbers): the
    missing pairs are dropped like NaN, on either axis."""
    fit = stats.fit_line(np.array([1, 2, 3, None, 5], dtype=object), [3, 5, 7, 9, None])
    assert (fit.slope, fit.intercept, fit.n) == (pytest.approx(2.0), pytest.approx(1.0), 3)
    swapped = stats.fit_line([3, 5, 7, 9, None], np.array([1, 2, 3, None, 5], dtype=object))
    assert swapped.n == 3 and swapped.slope == pytest.approx(0.5)


def test_describe_and_the_rank_test_on_tiny_samples_quietly():
    """A configuration with no trial, or one: NaN where a figure needs more, no warning
    (numpy's empty median and one-value deviation warn); two values have a deviation."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty, one = stats.describe([]), stats.describe([4.0])
        assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("median", "mean", "std"))
        assert (one["n"], one["median"], one["mean"]) == (1, 4.0, 4.0) and math.isnan(one["std"])
        assert stats.describe([1.0, 3.0])["std"] == pytest.approx(math.sqrt(2))
        for hit, miss in (([], [1.0, 2.0]), ([1.0, 2.0], [])):
            test = stats.mann_whitney(hit, miss)
            assert math.isnan(test.u) and math.isnan(test.p)
    single = stats.mann_whitney([1.0], [2.0, 3.0, 4.0])
    assert (single.u, single.p) == (0.0, pytest.approx(0.5))
    assert stats.mann_whitney([5.0, 6.0], [1.0]).u == 2.0


def test_prefill_throughput_counts_the_trials_with_both_numbers():
    """Tokens over seconds, summed over the trials that have both (a cell written as
    empty text counts as missing), even when the prefill took under a millisecond."""
    df = pd.DataFrame(
        {
            "ttft_prefill_tokens": [100, 50, 40, ""],
            "ttft_prefill_ms": [10.0, None, "", 5.0],
        },
        dtype=object,
    )
    assert stats.prefill_tok_s(df) == pytest.approx(100 / 10.0 * 1000)
    quick = pd.DataFrame({"ttft_prefill_tokens": [8], "ttft_prefill_ms": [0.5]})
    assert stats.prefill_tok_s(quick) == pytest.approx(16_000)


def test_the_line_and_bow_far_from_zero_and_over_resamples():
    """Centring x keeps the parabola's fit conditioned where B is large; with several
    rows of y (resamples) and too few distinct x, every row gets NaN."""
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0] * 2)
    y = 3 + 2 * x + 0.5 * x**2
    slope, bow = stats.line_and_bow(x, y)
    assert bow == pytest.approx(0.5 * 16 / 4)
    far_slope, far_bow = stats.line_and_bow(x + 1e7, y)
    assert (far_slope, far_bow) == (pytest.approx(slope, rel=1e-6), pytest.approx(bow, rel=1e-6))
    slopes, bows = stats.line_and_bow([5, 5, 5], np.ones((4, 3)))
    assert slopes.shape == bows.shape == (4,) and np.isnan(slopes).all()


def test_each_pairs_one_sided_test_is_its_own():
    """Pairs are batched for speed, but each p-value is that of its own call: a small
    pair without ties keeps scipy's exact test even beside a pair with ties (scipy
    judges ties over a whole batch), a one-value sample is a sample, an empty one gives
    NaN and the pairs after it are still tested."""
    rng = np.random.default_rng(0)
    pairs = [
        (rng.normal(size=8), rng.normal(size=8) + 1.0),  # small, no ties: exact
        (np.array([1.0, 1, 2, 3, 4, 5, 6, 7]), rng.normal(size=8) + 3.0),  # ties
        ([], [1.0, 2.0]),
        ([1.0, 2.0], []),
        ([0.5], [1.0, 2.0, 3.0]),
        ([1.0, 2.0, 3.0], [2.5]),
        (rng.normal(size=9), rng.normal(size=9) + 0.5),  # large: batched
        (rng.normal(size=9), np.round(rng.normal(size=9) + 0.5)),  # large, ties
    ]
    got = stats.mann_whitney_greater_each([lo for lo, _ in pairs], [hi for _, hi in pairs])
    for i, (lo, hi) in enumerate(pairs):
        if len(lo) == 0 or len(hi) == 0:
            assert math.isnan(got[i]), i
        else:
            want = sps.mannwhitneyu(hi, lo, alternative="greater").pvalue
            assert got[i] == pytest.approx(want, rel=1e-12), i


def test_slow_outliers_at_the_edges_of_their_rule():
    """Five positive values are enough; zeros, negatives and NaN are never judged (a
    log scale), whatever their size; values under 1 (seconds) count like any other."""
    five = [1.0, 1.02, 0.98, 1.01, 9.0]
    assert stats.slow_outliers(five, k=5, slow="high").tolist() == [False] * 4 + [True]
    assert not stats.slow_outliers(five, k=5, slow="high", min_n=6).any()
    seconds = [0.10, 0.102, 0.098, 0.101, 0.099, 0.9]
    assert stats.slow_outliers(seconds, k=5, slow="high").tolist() == [False] * 5 + [True]
    odd = [0.0, -3.0, math.nan, 1.0, 1.02, 0.98, 1.01, 0.99]
    assert not stats.slow_outliers(odd, k=5, slow="low").any()
    assert not stats.slow_outliers([None, 1.0, 1.0, 1.0, 1.0, 1.0], k=5, slow="low").any()


def test_lack_of_fit_takes_rounding_for_no_pure_error():
    """Repeats that differ only by rounding, at a large level, have no pure error to speak
    of: the F test is undefined, not a huge F."""
    x = [1, 1, 2, 2, 3, 3]
    y = 1e6 * np.array(x, dtype=float) + np.array([0.0, 1e-9, 0.0, 1e-9, 0.0, 1e-9])
    lof = stats.lack_of_fit(x, y)
    assert math.isnan(lof.f) and math.isnan(lof.p)
    # a missing y drops its pair only
    lof = stats.lack_of_fit([0, 0, 1, 1, 2, 2, 3], [0, 2, 1, 3, 6, 8, math.nan])
    assert lof == stats.lack_of_fit([0, 0, 1, 1, 2, 2], [0, 2, 1, 3, 6, 8])


def test_holm_sidak_leaves_a_missing_p_value_out():
    """A missing p-value is no test: the other two form a family of two (by hand: the
    smaller is 1 - (1 - 0.01)^2 = 0.0199, the larger stays 0.04)."""
    adjusted = stats.holm_sidak([0.01, None, 0.04])
    assert adjusted == pytest.approx([0.0199, math.nan, 0.04], nan_ok=True)
