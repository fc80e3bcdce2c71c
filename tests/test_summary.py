"""The summary: per-configuration tables, files, and reading results back."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from synthetic import SEED_CONFIGS, make_results, write_results

from kvcache_exp.analysis import load, stats, tables, trials, verdicts
from kvcache_exp.columns import SEED_RESULT_COLUMNS
from kvcache_exp.report import summary
from kvcache_exp.report.document import to_markdown

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
    row = tables.summarize(df).iloc[0]
    assert (row.size_a, row.size_b, row.n_hit, row.n_miss) == (512, 256, 3, 3)
    assert (row.hit_ttft_ms, row.miss_ttft_ms) == (28.0, 150.0)
    assert row.hit_ttft_std_ms == pytest.approx(1.0)
    assert row.degradation_pct == pytest.approx(122 / 28 * 100)
    assert row.mannwhitney_u == 0.0
    assert row.hit_tokens_recomputed == 16 and row.miss_tokens_recomputed == 256 + 16
    assert "| 512 / 256 | 28.0 ms | 150.0 ms | +436% |" in to_markdown(summary.build(df, "m"))


def _with_hiccups(df: pd.DataFrame) -> pd.DataFrame:
    """One trial of each configuration and condition 3x slower (TTFT) or decoding at a third
    of the speed: a shared machine's hiccups, for the outlier rule to set aside."""
    out = df.copy()
    first = out.groupby(["size_a", "size_b", "condition"]).head(1).index
    out.loc[first, "ttft_ms"] *= 3.0
    out.loc[first, "decode_tok_s"] /= 3.0
    return out


def test_the_seeds_table_and_the_verdicts_agree_on_the_same_trials():
    """One quantity, one number and one interval: the degradation is the verdict's miss/hit
    ratio, (ratio - 1) * 100 with the same interval ends, and the table's medians, counts
    and decode figures come from the same trials, with the slow outliers set aside once."""
    df = _with_hiccups(make_results(noise_cv=0.05, seed=4))
    df.loc[5, "cache_verified"] = False
    table = tables.summarize(df)
    per_config = verdicts.miss_costlier_per_config(trials.by_configuration(df))
    decode = {v.key: v for v in verdicts.verdicts(df)}["decode_unaffected"]
    assert decode.evidence["n_set_aside"] == 6  # each decode hiccup, once
    for (_, row), verdict in zip(table.iterrows(), per_config, strict=True):
        ev = verdict.evidence
        assert (row.size_a, row.size_b) == (ev["size_a"], ev["size_b"])
        assert (row.cost_ratio, row.cost_ratio_ci_low, row.cost_ratio_ci_high) == (
            ev["ratio"],
            ev["ratio_ci_low"],
            ev["ratio_ci_high"],
        )
        for degradation, ratio in (
            ("degradation_pct", "cost_ratio"),
            ("degradation_ci_low", "cost_ratio_ci_low"),
            ("degradation_ci_high", "cost_ratio_ci_high"),
        ):
            assert row[degradation] == (row[ratio] - 1) * 100
        # The seed's formula on the table's own medians gives the same degradation.
        seed_formula = (row.miss_ttft_ms - row.hit_ttft_ms) / row.hit_ttft_ms * 100
        assert row.degradation_pct == pytest.approx(seed_formula, rel=1e-12)
        assert row.n_set_aside == ev["n_set_aside"] == 2  # the two TTFT hiccups
        assert (row.n_hit, row.n_miss) == (ev["n_hit"], ev["n_miss"])
    # 512/256 lost a hit to verification and one to the outlier rule: every trial counted once.
    first = table.iloc[0]
    assert (first.n_hit, first.n_miss, first.n_unverified) == (8, 9, 1)
    assert first.n_hit + first.n_miss + first.n_set_aside + first.n_unverified == 20
    # The medians and their intervals are those of the kept trials, hiccups left out.
    kept = df.iloc[1:10]
    kept = kept[kept.index != 5]
    assert first.hit_ttft_ms == np.median(kept["ttft_ms"])
    assert first.hit_ttft_ci_high_ms < df.loc[0, "ttft_ms"] / 2
    assert first.hit_decode_tok_s == np.median(kept["decode_tok_s"])
    # The summary prints one pooled decode ratio: the verdict's.
    text = to_markdown(summary.build(df, "m"))
    ev = decode.evidence
    pooled = f"decode ratio miss/hit = {ev['ratio']:.3f} [{ev['ratio_ci_low']:.3f}, "
    assert pooled in text
    assert f"({stats.RESAMPLES:,} resamples" in text


def test_outlier_rule_off_keeps_every_verified_trial(monkeypatch):
    monkeypatch.setattr(trials, "SLOW_OUTLIER_K", None)
    df = _with_hiccups(make_results())
    row = tables.summarize(df).iloc[0]
    assert (row.n_hit, row.n_set_aside) == (10, 0)
    assert row.hit_ttft_ms == df[(df.condition == "hit") & (df.size_b == 256)]["ttft_ms"].median()
    assert not math.isnan(row.degradation_ci_low)


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
    assert list(table.columns) == list(tables.SUMMARY_COLUMNS)
    assert len(table) == 3
    assert list(zip(table.size_a, table.size_b, strict=True)) == list(SEED_CONFIGS)
    assert (table.n_hit == 10).all() and (table.n_unverified == 0).all()

    text = out_md.read_text()
    assert text.startswith("# KV-cache prefix invalidation: SmolLM2-135M")
    assert "| Config (A/B) | Cache Hit TTFT | Cache Miss TTFT | Degradation |" in text
    for _, row in tables.summarize(load.load_results(paths)).iterrows():
        assert _seed_row(row) in text
    for claim in ("constant across configurations", "linearly with B", "unaffected"):
        assert claim in text
    verdict_lines = [ln for ln in text.splitlines() if ln.startswith("- **")]
    assert len(verdict_lines) == 4 and all(": SUPPORTED." in ln for ln in verdict_lines)
    assert "Mann-Whitney" in text and "R²" in text
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
        load.load_results([bad])


def test_load_results_rejects_unknown_condition(tmp_path):
    df = make_results(SEED_CONFIGS[:1])
    df.loc[0, "condition"] = "partial"
    path = tmp_path / "results_phase3b_a512_b256.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match="partial"):
        load.load_results([path])


def test_load_results_reads_the_seeds_own_csvs(tmp_path):
    paths = write_results(make_results(), tmp_path)
    for path in paths:  # drop our columns: exactly what the seed wrote
        pd.read_csv(path)[list(SEED_RESULT_COLUMNS)].to_csv(path, index=False)
    df = load.load_results(paths)
    assert len(df) == 60 and set(df["size_b"]) == {256, 384, 512}
    assert df["decode_tok_s"].isna().all()
    statuses = {v.key: v.status for v in verdicts.verdicts(df)}
    assert statuses["decode_unaffected"] == verdicts.UNDETERMINED


def test_load_results_needs_files():
    with pytest.raises(ValueError, match="no results files"):
        load.load_results([])


def _records(tmp_path, paths, **differences):
    """A provenance record beside each results CSV; ``differences`` maps a label to
    (section, key, value) that makes its record differ."""
    import json

    records = []
    for path in paths:
        label = path.name.removeprefix("results_phase3b_").removesuffix(".csv")
        record = {
            "code": {"package_sha256": "c0de"},
            "model": {"sha256": "m0de1"},
            "machine": {"host": "node-1"},
            "engine": {"engine": "llama_cpp_python", "n_threads": 2},
        }
        if label in differences:
            section, key, value = differences[label]
            record[section][key] = value
        out = tmp_path / f"run_phase3b_{label}.json"
        out.write_text(json.dumps(record))
        records.append(out)
    return records


def test_summary_refuses_to_pool_different_conditions_and_names_them(tmp_path):
    paths = write_results(make_results(), tmp_path)
    records = _records(tmp_path, paths, a384_b384=("machine", "host", "node-2"))
    out_csv, out_md = tmp_path / "s.csv", tmp_path / "s.md"
    with pytest.raises(summary.PoolingError, match=r"machine\.host differs") as caught:
        summary.write_summary(paths, out_csv, out_md, "m", record_paths=records)
    assert "run_phase3b_a384_b384: 'node-2'" in str(caught.value)
    assert "run_phase3b_a512_b256, run_phase3b_a256_b512: 'node-1'" in str(caught.value)
    assert not out_csv.exists() and not out_md.exists()
    summary.write_summary(paths, out_csv, out_md, "m", record_paths=records, allow_mixed=True)
    assert "pooled despite different conditions: machine.host differs" in out_md.read_text()


def test_summary_pools_records_that_agree(tmp_path):
    paths = write_results(make_results(), tmp_path)
    records = _records(tmp_path, paths)
    summary.write_summary(paths, tmp_path / "s.csv", tmp_path / "s.md", "m", record_paths=records)
    assert "Warning" not in (tmp_path / "s.md").read_text()


def test_the_outlier_rule_in_words(monkeypatch):
    """The summary states the rule where it applies, and says so when there is none."""
    assert trials.outlier_rule() == (
        "trials more than 5 robust standard deviations slower than the median of their "
        "configuration and condition (on a log scale) are set aside as slow outliers"
    )
    monkeypatch.setattr(trials, "SLOW_OUTLIER_K", None)
    assert trials.outlier_rule() == "no trial is set aside as a slow outlier"


def test_the_fitted_lines_use_the_kept_trials_only():
    """The summary's three lines fit the trials the verdicts keep: a slow miss set aside
    leaves them as they are without it, and clean data gives the lines it was made from
    (miss TTFT 20 ms + 0.5 ms per recomputed token, hit TTFT flat at 28 ms)."""
    df = make_results()
    kept = trials.kept_rows(df, trials.by_configuration(df))
    pd.testing.assert_frame_equal(kept, df[df.condition.isin(["hit", "miss"])])
    assert trials.kept_rows(df, []).empty
    slow_row = df[df.condition == "miss"].index[0]
    slow = df.copy()
    slow.loc[slow_row, "ttft_ms"] *= 50
    fits = tables.fits(slow)
    assert fits == tables.fits(df.drop(index=slow_row))
    assert fits["miss_ttft_vs_recomputed"].slope == pytest.approx(0.5, rel=0.05)
    assert fits["hit_ttft_vs_b"].slope == pytest.approx(0.0, abs=0.01)
    assert fits["miss_ttft_vs_recomputed"].n == (df.condition == "miss").sum() - 1
