"""Statistics, verdicts and the summary files, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from synthetic import SEED_CONFIGS, make_results, write_results

from kvcache_exp import stats, summary
from kvcache_exp.columns import SEED_RESULT_COLUMNS

# --------------------------------------------------------------------------- descriptive


def test_describe_matches_hand_computation():
    # median of 1,2,3,10 is 2.5; mean 4; squared deviations 9+4+1+36 = 50, /3 -> sd 4.0825
    d = stats.describe([3.0, 1.0, 2.0, 10.0])
    assert d == pytest.approx({"n": 4, "median": 2.5, "mean": 4.0, "std": math.sqrt(50 / 3)})


def test_describe_single_value_has_no_spread_and_ignores_nan():
    d = stats.describe([7.0, math.nan])
    assert d["n"] == 1 and d["median"] == 7.0 and d["mean"] == 7.0
    assert math.isnan(d["std"])


def test_degradation_is_the_seeds_formula():
    assert stats.degradation_pct([10, 20, 30], [50, 60, 70]) == pytest.approx(200.0)
    # the seed's first row: ~28 ms hit, ~150 ms miss -> (150 - 28) / 28 = +435.7%
    assert stats.degradation_pct([27, 28, 29], [149, 150, 151]) == pytest.approx(122 / 28 * 100)


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


def test_fit_line_degenerate_inputs():
    one_x = stats.fit_line([5, 5, 5], [1, 2, 3])
    assert math.isnan(one_x.slope) and one_x.n == 3
    two = stats.fit_line([0, 1], [1, 3])  # a line, but no residual degrees of freedom
    assert two.slope == pytest.approx(2.0) and math.isnan(two.slope_se)
    assert not two.slope_interval.contains(2.0)
    flat = stats.fit_line([0, 1, 2], [4, 4, 4])  # R² undefined when y does not vary
    assert flat.slope == pytest.approx(0.0) and math.isnan(flat.r_squared)
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
    assert hit.n == 30 and hit.slope_interval.contains(0.0)


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
    assert not single.contains(5.0)
    constant = stats.median_ci([3.0] * 5)
    assert (constant.low, constant.high) == (3.0, 3.0)
    assert math.isnan(stats.median_ci([]).estimate)


def test_degradation_and_ratio_intervals():
    hit, miss = [27, 28, 29, 28, 28], [149, 150, 151, 150, 152]
    deg = stats.degradation_ci(hit, miss)
    assert deg.estimate == pytest.approx(stats.degradation_pct(hit, miss))
    assert deg.low <= deg.estimate <= deg.high
    # extremes: (149 - 29) / 29 and (152 - 27) / 27
    assert deg.low >= 120 / 29 * 100 and deg.high <= 125 / 27 * 100
    assert stats.degradation_ci(hit, miss) == deg
    ratio = stats.ratio_ci([200.0] * 4, [100.0] * 4)
    assert (ratio.estimate, ratio.low, ratio.high) == (0.5, 0.5, 0.5)
    lonely = stats.ratio_ci([200.0], [100.0])
    assert lonely.estimate == 0.5 and math.isnan(lonely.low)


# --------------------------------------------------------------------------- verdicts


def _status(df: pd.DataFrame) -> dict[str, str]:
    return {v.key: v.status for v in summary.verdicts(df)}


def test_every_claim_supported_on_seed_like_data():
    found = summary.verdicts(make_results())
    assert [v.status for v in found] == [summary.SUPPORTED] * 3
    for verdict in found:
        assert "Threshold" in verdict.reason and verdict.evidence


def test_every_claim_not_supported():
    v_shape = {256: 300.0, 384: 150.0, 512: 300.0}
    df = make_results(
        hit_ttft=lambda a, b, q: 10.0 + 0.2 * b,  # +51 ms over B = 256..512
        miss_ttft=lambda a, b, q: v_shape[b],
        miss_decode_tok_s=150.0,  # ratio ~0.71
    )
    assert _status(df) == {
        "hit_constant": summary.NOT_SUPPORTED,
        "miss_linear": summary.NOT_SUPPORTED,
        "decode_unaffected": summary.NOT_SUPPORTED,
    }


def test_hit_constant_supported_by_a_small_but_significant_slope():
    df = make_results(hit_ttft=lambda a, b, q: 28.0 + 0.001 * b, trials=200)
    verdict = summary.verdicts(df)[0]
    assert verdict.status == summary.SUPPORTED
    assert verdict.evidence["change_share"] < summary.HIT_CONSTANT_MAX_CHANGE


def test_miss_linear_needs_three_configurations():
    verdict = summary.verdicts(make_results(SEED_CONFIGS[:2]))[1]
    assert verdict.status == summary.UNDETERMINED
    assert "not enough configurations" in verdict.reason


def test_miss_linear_rejects_a_poor_fit():
    # Linear trend plus a large alternating error: slope > 0 but R² far below 0.9.
    configs = [(0, b) for b in (100, 200, 300, 400, 500, 600)]
    wobble = {b: (60.0 if i % 2 else -60.0) for i, (_, b) in enumerate(configs)}
    df = make_results(configs, miss_ttft=lambda a, b, q: 100 + 0.1 * b + wobble[b])
    verdict = summary.verdicts(df)[1]
    assert verdict.status == summary.NOT_SUPPORTED
    assert verdict.evidence["r_squared"] < summary.MISS_LINEAR_MIN_R2


def test_single_configuration_and_missing_decode_are_undetermined():
    df = make_results(SEED_CONFIGS[:1])
    df["decode_tok_s"] = math.nan
    assert set(_status(df).values()) == {summary.UNDETERMINED}


# --------------------------------------------------------------------------- summary files


def _seed_row(row: pd.Series) -> str:
    return (
        f"| {int(row.size_a)} / {int(row.size_b)} | {row.hit_ttft_ms:.1f} ms | "
        f"{row.miss_ttft_ms:.1f} ms | {row.degradation_pct:+.0f}% |"
    )


def test_summarize_hand_computed_configuration():
    df = make_results(SEED_CONFIGS[:1], trials=3)
    df.loc[df["condition"] == "hit", "ttft_ms"] = [27.0, 28.0, 29.0]
    df.loc[df["condition"] == "miss", "ttft_ms"] = [149.0, 150.0, 151.0]
    row = summary.summarize(df).iloc[0]
    assert (row.size_a, row.size_b, row.n_hit, row.n_miss) == (512, 256, 3, 3)
    assert (row.hit_ttft_ms, row.miss_ttft_ms) == (28.0, 150.0)
    assert row.hit_ttft_std_ms == pytest.approx(1.0)
    assert row.degradation_pct == pytest.approx(122 / 28 * 100)
    assert row.mannwhitney_u == 0.0
    assert row.hit_tokens_recomputed == 16 and row.miss_tokens_recomputed == 256 + 16
    assert "| 512 / 256 | 28.0 ms | 150.0 ms | +436% |" in summary.render_markdown(df, "m")


def test_write_summary_files(tmp_path):
    df = make_results()
    paths = write_results(df, tmp_path)
    out_csv, out_md = tmp_path / "out" / "summary.csv", tmp_path / "out" / "summary.md"
    summary.write_summary(paths, out_csv, out_md, model_name="SmolLM2-135M")

    table = pd.read_csv(out_csv)
    assert list(table.columns[:5]) == [
        "size_a",
        "size_b",
        "hit_ttft_ms",
        "miss_ttft_ms",
        "degradation_pct",
    ]
    assert list(table.columns) == list(summary.SUMMARY_COLUMNS)
    assert len(table) == 3
    assert list(zip(table.size_a, table.size_b, strict=True)) == list(SEED_CONFIGS)
    assert (table.n_hit == 10).all() and (table.n_unverified == 0).all()

    text = out_md.read_text()
    assert text.startswith("# KV-cache prefix invalidation: SmolLM2-135M")
    assert "| Config (A/B) | Cache Hit TTFT | Cache Miss TTFT | Degradation |" in text
    for _, row in summary.summarize(summary.load_results(paths)).iterrows():
        assert _seed_row(row) in text
    for claim in ("constant across configurations", "linearly with B", "unaffected"):
        assert claim in text
    assert text.count("SUPPORTED") == 3 and "Mann-Whitney" in text and "R²" in text
    assert sorted(p.name for p in out_csv.parent.iterdir()) == ["summary.csv", "summary.md"]


def test_write_summary_with_one_trial_per_condition(tmp_path):
    paths = write_results(make_results(trials=1), tmp_path)
    summary.write_summary(paths, tmp_path / "s.csv", tmp_path / "s.md", model_name="m")
    table = pd.read_csv(tmp_path / "s.csv")
    assert table["hit_ttft_ci_low_ms"].isna().all() and table["hit_ttft_std_ms"].isna().all()
    assert "n/a" in (tmp_path / "s.md").read_text()


def test_write_summary_flags_unverified_rows(tmp_path):
    df = make_results()
    df.loc[0, "cache_verified"] = False
    paths = write_results(df, tmp_path)
    summary.write_summary(paths, tmp_path / "s.csv", tmp_path / "s.md", model_name="m")
    assert pd.read_csv(tmp_path / "s.csv")["n_unverified"].tolist() == [1, 0, 0]
    assert "1 trial(s) failed cache verification" in (tmp_path / "s.md").read_text()


def test_load_results_rejects_wrong_column_order(tmp_path):
    df = make_results(SEED_CONFIGS[:1])
    columns = list(df.columns)
    columns[2], columns[3] = columns[3], columns[2]
    bad = tmp_path / "results_phase3b_a512_b256.csv"
    df[columns].to_csv(bad, index=False)
    with pytest.raises(ValueError, match="results_phase3b_a512_b256.csv.*seed's"):
        summary.load_results([bad])


def test_load_results_rejects_unknown_condition(tmp_path):
    df = make_results(SEED_CONFIGS[:1])
    df.loc[0, "condition"] = "partial"
    path = tmp_path / "results_phase3b_a512_b256.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match="partial"):
        summary.load_results([path])


def test_load_results_reads_the_seeds_own_csvs(tmp_path):
    paths = write_results(make_results(), tmp_path)
    for path in paths:  # drop our columns: exactly what the seed wrote
        pd.read_csv(path)[list(SEED_RESULT_COLUMNS)].to_csv(path, index=False)
    df = summary.load_results(paths)
    assert len(df) == 60 and set(df["size_b"]) == {256, 384, 512}
    assert df["decode_tok_s"].isna().all()
    statuses = _status(df)
    assert statuses["hit_constant"] == summary.SUPPORTED
    assert statuses["decode_unaffected"] == summary.UNDETERMINED


def test_load_results_needs_files():
    with pytest.raises(ValueError, match="no results files"):
        summary.load_results([])
