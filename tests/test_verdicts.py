"""Verdicts on the hypothesis and the seed's claims, on synthetic data with known answers.

Every claim is shown to come out SUPPORTED, NOT SUPPORTED and UNDETERMINED on data made
for each; noise alone must leave a claim UNDETERMINED, neither SUPPORTED nor NOT
SUPPORTED. How often each verdict comes out under noise, and how long it takes, is
measured in benchmarks/verdict_calibration.py, not here.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from synthetic import SEED_CONFIGS, make_results

from kvcache_exp.analysis import trials
from kvcache_exp.analysis import verdicts as vd
from kvcache_exp.analysis.verdicts import NOT_SUPPORTED, SUPPORTED, UNDETERMINED

KEYS = ["miss_costlier", "hit_constant", "miss_linear", "decode_unaffected"]


def _found(df: pd.DataFrame) -> dict[str, vd.Verdict]:
    return {v.key: v for v in vd.verdicts(df)}


def _status(df: pd.DataFrame, key: str) -> str:
    return _found(df)[key].status


def _by_config(df: pd.DataFrame) -> list[vd.Verdict]:
    """The hypothesis in each configuration, from the trials the summary uses."""
    return vd.miss_costlier_per_config(trials.by_configuration(df))


def _quadratic_miss(a: int, b: int, q: int) -> float:
    """100, 150, 300 ms at B = 256, 384, 512: the bow is 25% of the rise, yet R² > 0.9."""
    t = (b - 256) / 256
    return 100.0 + 200.0 * t * t


def _unverified(df: pd.DataFrame, rows: pd.Index | list[int]) -> pd.DataFrame:
    out = df.copy()
    out["cache_verified"] = out["cache_verified"].astype(object)
    out.loc[rows, "cache_verified"] = False
    return out


# --------------------------------------------------------------------------- all verdicts


def test_four_verdicts_in_order_each_with_its_rule_and_numbers():
    df = make_results()
    found = vd.verdicts(df)
    assert vd.verdicts(df) == found  # a fixed bootstrap seed: reproducible from the CSVs
    assert [v.key for v in found] == KEYS
    assert [v.status for v in found] == [SUPPORTED] * 4
    for verdict in found:
        assert verdict.status in (SUPPORTED, NOT_SUPPORTED, UNDETERMINED)
        assert "Rule" in verdict.reason and verdict.evidence
        assert all(math.isfinite(x) for x in verdict.evidence.values()), verdict.key


def test_one_trial_per_configuration_is_undetermined_never_not_supported():
    # Intervals cannot be computed from single trials: every verdict is UNDETERMINED,
    # even though the points happen to lie on lines.
    found = vd.verdicts(make_results(trials=1))
    assert [v.status for v in found] == [UNDETERMINED] * 4
    by_config = _by_config(make_results(trials=1))
    assert {v.status for v in by_config} == {UNDETERMINED}
    assert all(math.isnan(v.evidence["ratio_ci_low"]) for v in by_config)


def test_unverified_trials_never_enter_a_statistic():
    df = make_results()
    wild = df.iloc[[0, 35]].copy()  # a hit of 512/256 and a miss of 384/384
    wild["ttft_ms"] *= 50.0
    wild["decode_tok_s"] /= 50.0
    wild["trial"] = 99
    polluted = _unverified(pd.concat([df, wild], ignore_index=True), [len(df), len(df) + 1])
    assert vd.verdicts(polluted) == vd.verdicts(df)
    assert _by_config(polluted) == _by_config(df)


def test_unverified_flags_read_as_text_and_rows_without_ttft_are_dropped():
    df = make_results()
    as_text = df.assign(cache_verified=df["cache_verified"].map({True: "True"}))
    as_text.loc[[3, 4], "cache_verified"] = "False"
    as_text.loc[[3, 4], "ttft_ms"] = 1e6
    no_ttft = df.copy()
    no_ttft.loc[[3, 4], "ttft_ms"] = [math.nan, math.inf]
    dropped = df.drop(index=[3, 4])
    assert vd.verdicts(as_text) == vd.verdicts(dropped)
    assert vd.verdicts(no_ttft) == vd.verdicts(dropped)


# --------------------------------------------------------------------------- hypothesis


def test_miss_costlier_per_configuration_and_overall():
    # 384/384: the miss is faster than the hit (20 < 28 ms); 256/512: no difference.
    miss = {256: 150.0, 384: 20.0, 512: 28.0}
    df = make_results(miss_ttft=lambda a, b, q: miss[b])
    per = _by_config(df)
    assert [(v.evidence["size_a"], v.evidence["size_b"]) for v in per] == list(SEED_CONFIGS)
    assert [v.status for v in per] == [SUPPORTED, NOT_SUPPORTED, UNDETERMINED]
    assert per[0].evidence["ratio_ci_low"] > 1 and per[0].evidence["p_one_sided"] < 0.05
    assert per[1].evidence["ratio_ci_high"] < 1 and per[1].evidence["p_one_sided"] > 0.5
    assert per[2].evidence["ratio_ci_low"] < 1 < per[2].evidence["ratio_ci_high"]
    for verdict in per:
        ev = verdict.evidence
        assert ev["ratio_ci_low"] <= ev["ratio"] <= ev["ratio_ci_high"]
        assert f"{ev['ratio']:.3g}" in verdict.reason
    overall = _found(df)["miss_costlier"]
    assert overall.status == NOT_SUPPORTED
    assert overall.evidence["n_supported"] == 1 and overall.evidence["n_not_supported"] == 1


def test_miss_costlier_undetermined_when_no_configuration_differs():
    df = make_results(miss_ttft=lambda a, b, q: 28.0, noise_cv=0.15)
    assert {v.status for v in _by_config(df)} == {UNDETERMINED}
    assert _status(df, "miss_costlier") == UNDETERMINED


def test_miss_costlier_follows_the_order_configurations_appear_in():
    configs = list(reversed(SEED_CONFIGS))
    per = _by_config(make_results(configs))
    assert [(v.evidence["size_a"], v.evidence["size_b"]) for v in per] == configs


def test_miss_costlier_corrects_for_several_configurations():
    # Two trials each: the smallest one-sided p is 1/6, never significant, so the
    # hypothesis stays undetermined however large the ratio.
    per = _by_config(make_results(trials=2))
    assert {v.status for v in per} == {UNDETERMINED}
    assert all(v.evidence["p_adjusted"] >= v.evidence["p_one_sided"] for v in per)


# --------------------------------------------------------------------------- claim 1


def test_hit_constant_is_an_equivalence_test():
    verdict = _found(make_results())["hit_constant"]
    assert verdict.status == SUPPORTED
    ev = verdict.evidence
    assert -0.10 < ev["change_share_ci_low"] <= ev["change_share_ci_high"] < 0.10
    assert "±10%" in verdict.reason


def test_hit_constant_noise_alone_is_not_supported():
    # Flat hit TTFT, 35% trial-to-trial noise: the slope's CI contains 0 (the old rule
    # said SUPPORTED), but it is far too wide to bound the change within 10%.
    df = make_results(noise_cv=0.35, seed=3)
    verdict = _found(df)["hit_constant"]
    assert verdict.status == UNDETERMINED
    ev = verdict.evidence
    assert ev["change_share_ci_low"] < 0 < ev["change_share_ci_high"]
    assert max(-ev["change_share_ci_low"], ev["change_share_ci_high"]) >= 0.10


def test_hit_constant_not_supported_when_hit_ttft_rises():
    # 20 + 0.04 B: 30.2 ms at B = 256, 40.5 ms at B = 512, a third more.
    verdict = _found(make_results(hit_ttft=lambda a, b, q: 20.0 + 0.04 * b))["hit_constant"]
    assert verdict.status == NOT_SUPPORTED
    assert verdict.evidence["change_share_ci_low"] > 0.10
    assert verdict.evidence["change_share"] == pytest.approx(10.24 / 35.36, rel=0.05)


# --------------------------------------------------------------------------- claim 2


def test_miss_linear_supported_with_its_evidence():
    verdict = _found(make_results())["miss_linear"]
    assert verdict.status == SUPPORTED
    ev = verdict.evidence
    assert ev["slope_ci_low"] < 0.5 < ev["slope_ci_high"]  # linear_miss: 0.5 ms/token
    margin = vd.MISS_LINEAR_MAX_BOW
    assert -margin < ev["bow_share_ci_low"] <= ev["bow_share_ci_high"] < margin
    assert 0 <= ev["lack_of_fit_p"] <= 1


def test_miss_linear_rejects_a_quadratic_and_a_fall():
    verdict = _found(make_results(miss_ttft=_quadratic_miss))["miss_linear"]
    assert verdict.status == NOT_SUPPORTED
    assert verdict.evidence["lack_of_fit_p"] < 0.05
    assert verdict.evidence["bow_share"] == pytest.approx(0.25, abs=0.02)
    falling = _found(make_results(miss_ttft=lambda a, b, q: 400.0 - 0.5 * b))["miss_linear"]
    assert falling.status == NOT_SUPPORTED
    assert falling.evidence["slope_ci_high"] < 0 and "does not grow" in falling.reason


def test_miss_linear_a_detected_curve_is_not_supported_even_when_its_bow_is_small():
    """TTFT proportional to the square of the tokens recomputed: over the seed's range the
    parabola bows only 8% of the rise, inside the margin, but the repeats reject the line,
    so the claim of a line is not supported (the bow is too small to call it NOT)."""
    df = make_results(miss_ttft=lambda a, b, q: 1e-3 * (b + q) ** 2)
    verdict = _found(df)["miss_linear"]
    assert verdict.evidence["lack_of_fit_p"] < 0.05
    assert 0 < verdict.evidence["bow_share_ci_low"] < vd.MISS_LINEAR_MAX_BOW
    assert verdict.status == UNDETERMINED and "does not fit" in verdict.reason


def test_miss_linear_noise_alone_is_not_rejected():
    # A straight line under 35% noise: R² falls below 0.9 (the old rule said NOT
    # SUPPORTED); the bow's interval is simply too wide to decide.
    df = make_results(miss_ttft=lambda a, b, q: 100.0 + 0.5 * (b + q), noise_cv=0.35, seed=1)
    verdict = _found(df)["miss_linear"]
    assert verdict.status == UNDETERMINED
    assert verdict.evidence["bow_share_ci_low"] < 0 < verdict.evidence["bow_share_ci_high"]


def test_miss_linear_needs_three_distinct_b_values():
    two = _found(make_results(SEED_CONFIGS[:2]))["miss_linear"]
    assert two.status == UNDETERMINED and "not enough configurations" in two.reason
    # Three configurations measured, but every trial of one failed verification.
    df = make_results(miss_ttft=_quadratic_miss)
    lost = _unverified(df, df.index[df["size_b"] == 384])
    verdict = _found(lost)["miss_linear"]
    assert verdict.status == UNDETERMINED and "2 distinct" in verdict.reason


# --------------------------------------------------------------------------- claim 3


def test_decode_unaffected_three_outcomes():
    cases = [
        (210.0, 0.01, SUPPORTED),
        (150.0, 0.01, NOT_SUPPORTED),  # ratio 0.71
        (241.5, 0.01, NOT_SUPPORTED),  # ratio 1.15: never SUPPORTED
        (210.0, 0.35, UNDETERMINED),  # no effect, but too noisy to bound it (old: NOT SUPPORTED)
    ]
    for miss_decode, noise_cv, expected in cases:
        df = make_results(miss_decode_tok_s=miss_decode, noise_cv=noise_cv, seed=2)
        verdict = _found(df)["decode_unaffected"]
        assert verdict.status == expected, (miss_decode, noise_cv)
        ev = verdict.evidence
        assert ev["ratio_ci_low"] <= ev["ratio"] <= ev["ratio_ci_high"]
        assert f"{ev['ratio']:.3f}" in verdict.reason
        if expected == UNDETERMINED:
            assert ev["ratio_ci_low"] < 1 < ev["ratio_ci_high"]
    df = make_results()
    df["decode_tok_s"] = math.nan
    assert _status(df, "decode_unaffected") == UNDETERMINED


def test_slow_outlier_trials_do_not_decide():
    # One trial in each configuration and condition 3x slower (a shared machine's hiccup)
    # does not change any verdict of otherwise clean data.
    df = make_results()
    first = df.groupby(["size_a", "size_b", "condition"]).head(1).index
    df.loc[first, "ttft_ms"] *= 3.0
    df.loc[first, "decode_tok_s"] /= 3.0
    assert [v.status for v in vd.verdicts(df)] == [SUPPORTED] * 4
    assert np.isfinite(_found(df)["hit_constant"].evidence["change_share_ci_high"])


def test_the_bootstraps_settings_reach_every_verdict():
    """n_resamples and the seed given to verdicts() decide every interval, the
    per-configuration ones behind the main hypothesis included: another seed moves them."""
    df = make_results(noise_cv=0.2, seed=3)
    first = {v.key: v.evidence for v in vd.verdicts(df, n_resamples=400, seed=1)}
    again = {v.key: v.evidence for v in vd.verdicts(df, n_resamples=400, seed=1)}
    other = {v.key: v.evidence for v in vd.verdicts(df, n_resamples=400, seed=2)}
    assert first == again
    for key, evidence in first.items():
        assert evidence != other[key], key


def test_trials_from_seed_style_csvs_and_odd_cells():
    """The seed's own CSVs have no cache_verified, tokens_recomputed or decode_tok_s:
    every hit and miss trial counts, the tokens recomputed are B, and no decode figure is
    kept. A TTFT cell that is not a number drops its trial; one usable trial makes one
    configuration."""
    df = make_results().drop(columns=["cache_verified", "tokens_recomputed", "decode_tok_s"])
    configs = trials.by_configuration(df)
    assert [(c.size_a, c.size_b) for c in configs] == list(SEED_CONFIGS)
    assert all(c.hit.size == c.miss.size == 10 for c in configs)
    assert [c.x_miss for c in configs] == [float(b) for _, b in SEED_CONFIGS]
    assert all(c.hit_decode.size == c.miss_decode.size == 0 for c in configs)
    odd = make_results().astype({"ttft_ms": object})
    odd.loc[0, "ttft_ms"] = ""  # the first hit of the first configuration
    odd.loc[1, "size_b"] = math.nan  # its second hit, of no known configuration
    found = trials.by_configuration(odd)
    assert [(c.size_a, c.size_b) for c in found] == list(SEED_CONFIGS)
    assert (found[0].hit.size, found[0].miss.size) == (8, 10)
    [only] = trials.by_configuration(make_results().iloc[:1])
    assert (only.size_a, only.size_b, only.hit.size, only.miss.size) == (512, 256, 1, 0)


def test_each_claims_rule_at_its_thresholds():
    """The rules' words at their edges: 'within ±m' and 'above 1' are strict, 'at least m'
    and 'within [low, high]' include the bound, and an interval with one end undefined
    decides nothing (a slope at or below 0 rejects claim 2 whatever else is missing)."""
    from kvcache_exp.analysis.stats import Interval

    nan = math.nan
    # the main hypothesis, per configuration: (ratio, adjusted p slower, adjusted p faster)
    costlier = vd._miss_costlier_outcome
    assert costlier(Interval(2.0, 1.5, 2.5), 0.01, 0.99)[0] == SUPPORTED
    assert costlier(Interval(2.0, 1.0, 2.5), 0.01, 0.99)[0] == UNDETERMINED
    assert costlier(Interval(2.0, 1.5, 2.5), vd.ALPHA, 0.99)[0] == UNDETERMINED
    faster = costlier(Interval(0.5, 0.4, 0.6), 0.99, 0.0012)
    assert faster == (
        NOT_SUPPORTED,
        "Not supported: a miss is faster (Holm-Šidák-adjusted p = 0.0012 for a faster miss, "
        "and the whole CI lies below 1).",
    )
    assert costlier(Interval(0.5, 0.4, 1.0), 0.99, 0.01)[0] == UNDETERMINED
    assert costlier(Interval(0.5, 0.4, 0.6), 0.99, vd.ALPHA)[0] == UNDETERMINED
    for ratio, p, p_faster in (
        (Interval(2.0, nan, 2.5), 0.01, 0.99),
        (Interval(2.0, 1.5, nan), 0.01, 0.99),
        (Interval(2.0, 1.5, 2.5), nan, 0.99),
        (Interval(2.0, 1.5, 2.5), 0.01, nan),
    ):
        assert costlier(ratio, p, p_faster)[0] == UNDETERMINED

    # claim 1: the change of hit TTFT as a share of its level, margin m
    m = vd.HIT_CONSTANT_MAX_CHANGE
    hit = vd._hit_constant_outcome
    assert hit(Interval(0.0, -m + 0.01, m - 0.01))[0] == SUPPORTED
    assert hit(Interval(0.0, -m, m - 0.01))[0] == UNDETERMINED
    assert hit(Interval(0.0, -m + 0.01, m))[0] == UNDETERMINED
    assert hit(Interval(m, 0.01, 2 * m))[0] == NOT_SUPPORTED
    assert hit(Interval(-m, -2 * m, -0.01))[0] == NOT_SUPPORTED
    assert hit(Interval(m - 0.01, 0.01, 2 * m))[0] == UNDETERMINED
    assert hit(Interval(m, 0.0, 2 * m))[0] == UNDETERMINED
    assert hit(Interval(-m, -2 * m, 0.0))[0] == UNDETERMINED
    assert hit(Interval(0.0, nan, 0.01))[0] == UNDETERMINED
    assert hit(Interval(0.0, -0.01, nan))[0] == UNDETERMINED

    # claim 2: slope, bow share (margin m), lack-of-fit p
    m = vd.MISS_LINEAR_MAX_BOW
    line = vd._miss_linear_outcome
    rising, flat_bow = Interval(0.5, 0.4, 0.6), Interval(0.0, -m + 0.01, m - 0.01)
    assert line(rising, flat_bow, 0.5)[0] == SUPPORTED
    assert line(rising, flat_bow, nan)[0] == SUPPORTED  # no repeats: no F test
    assert line(Interval(0.5, 0.0, 0.6), flat_bow, 0.5)[0] == UNDETERMINED
    assert line(rising, Interval(0.0, -m, m - 0.01), 0.5)[0] == UNDETERMINED
    assert line(rising, Interval(0.0, -m + 0.01, m), 0.5)[0] == UNDETERMINED
    assert line(rising, flat_bow, vd.ALPHA)[0] == SUPPORTED
    assert line(rising, flat_bow, vd.ALPHA / 2)[0] == UNDETERMINED  # rejected, small bow
    assert line(Interval(0.5, 0.4, 0.0), flat_bow, 0.5)[0] == NOT_SUPPORTED
    assert line(Interval(0.5, nan, -0.1), Interval(0.0, nan, nan), nan)[0] == NOT_SUPPORTED
    assert line(rising, Interval(m, 0.0, 2 * m), 0.5)[0] == UNDETERMINED  # CI touches 0
    assert line(rising, Interval(m, 0.01, 2 * m), 0.5)[0] == NOT_SUPPORTED
    assert line(rising, Interval(-m, -2 * m, -0.01), 0.5)[0] == NOT_SUPPORTED
    assert line(rising, Interval(-m, -2 * m, 0.0), 0.5)[0] == UNDETERMINED
    assert line(rising, Interval(m - 0.01, 0.01, 2 * m), 0.5)[0] == UNDETERMINED
    for slope, share in (
        (Interval(0.5, nan, 0.6), flat_bow),
        (rising, Interval(0.0, nan, 0.01)),
        (rising, Interval(0.0, -0.01, nan)),
    ):
        assert line(slope, share, 0.5)[0] == UNDETERMINED

    # claim 3: the ratio of decode throughputs, bounds [low, high]
    low, high = vd.DECODE_RATIO_BOUNDS
    decode = vd._decode_outcome
    assert decode(Interval(1.0, low, high))[0] == SUPPORTED
    assert decode(Interval(1.2, 1.0 + 1e-9, 1.3))[0] == NOT_SUPPORTED
    assert decode(Interval(1.2, 1.0, 1.3))[0] == UNDETERMINED
    assert decode(Interval(0.8, 0.7, 1.0 - 1e-9))[0] == NOT_SUPPORTED
    assert decode(Interval(0.8, 0.7, 1.0))[0] == UNDETERMINED
    assert decode(Interval(high, 1.0 + 1e-9, 1.3))[0] == UNDETERMINED  # estimate in bounds
    assert decode(Interval(low, 0.7, 1.0 - 1e-9))[0] == UNDETERMINED
    assert decode(Interval(1.0, nan, high))[0] == UNDETERMINED
    assert decode(Interval(1.0, low, nan))[0] == UNDETERMINED
