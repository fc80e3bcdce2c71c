"""The cures' analysis, summary section and figure, on synthetic cures tables.

The tables are built here with stated TTFTs and quality figures, so that each test knows
its answer in advance: intervals and recovered shares are checked against values worked
out by hand, and each verdict is driven to each of its three outcomes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest

from kvcache_exp.analysis import cure_names, cure_verdicts, cures
from kvcache_exp.analysis.load import load_cures
from kvcache_exp.analysis.verdicts import NOT_SUPPORTED, SUPPORTED, UNDETERMINED
from kvcache_exp.columns import CURE_COLUMNS
from kvcache_exp.report import cures as report
from kvcache_exp.report import cures_plot
from kvcache_exp.report.document import Document, Table, to_html, to_markdown

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Fewer resamples than the summary's default: the tests' answers do not need more.
BOOT = {"n_resamples": 2_000}
SHARES = (0.1, 0.25, 0.5)
#: (kl_mean, top1_agreement) per cure, the mean over the prompts; each prompt's figures
#: lie ±SPREAD around it (KL relative, top-1 absolute), so the intervals are not empty.
QUALITY = {
    "miss": (0.0, 1.0),
    "shift": (0.075, 0.915),
    "shift_tail_0.1": (0.083, 0.915),
    "shift_tail_0.25": (0.078, 0.936),
    "shift_tail_0.5": (0.052, 0.957),
    "shift_head_0.1": (0.03, 0.96),
    "shift_head_0.25": (0.01, 0.985),
    "shift_head_0.5": (0.004, 0.99),
    "cached_vs_full": (0.0, 1.0),
}
SPREAD = 0.005


def _names(shares: Sequence[float]) -> list[str]:
    return (
        ["hit", "miss", "shift"]
        + [f"shift_tail_{r:g}" for r in shares]
        + [f"shift_head_{r:g}" for r in shares]
    )


def _base_ttft(cure: str) -> float:
    """Hit 10 ms, miss 100 ms, shift 15 ms, shift + recompute r 15 + 80·r ms."""
    fixed = {"hit": 10.0, "miss": 100.0}
    return fixed.get(cure, 15.0 + 80.0 * cure_names.recompute_share(cure))


def make_cures(
    configs: Sequence[tuple[int, int, int]] = ((8, 64, 64),),
    *,
    trials: int = 5,
    shares: Sequence[float] = SHARES,
    ttft: dict[str, Sequence[float]] | None = None,
    quality: dict[str, tuple[float, float]] | None = None,
    floor: tuple[float, float] | None = None,
    correction: str = "rope",
) -> pd.DataFrame:
    """A cures table as :func:`kvcache_exp.measure.cures.run_cures` writes it.

    ``configs`` are (keep_tokens, size_a, size_b); ``ttft`` gives a cure's per-trial TTFTs
    (else its base TTFT with ±2% spread); ``quality`` its (kl_mean, top1_agreement) (else
    :data:`QUALITY`), each prompt's within ±SPREAD; ``floor`` the miss's (the noise floor).
    The hit has no quality, as in a real run; the first kept prefix of each (A, B) has a
    ``cached_vs_full`` row per trial.
    """
    names = _names(shares)
    quality = {**QUALITY, **(quality or {}), **({"miss": floor} if floor else {})}
    rows = []
    first_keep: dict[tuple[int, int], int] = {}
    for keep, a, b in configs:
        first_keep.setdefault((a, b), keep)
        sizes = {"keep_tokens": keep, "size_a": a, "size_b": b, "size_q": 16}
        sizes["position_correction"] = correction
        for trial in range(1, trials + 1):
            wobble = ((trial % 3) - 1) * (trials > 1)
            if first_keep[(a, b)] == keep:
                rows.append(
                    {"trial": trial, "cure": "cached_vs_full", "order": 0, **sizes}
                    | {"predecessor": "", "recompute_where": "", "cache_verified": True}
                    | _quality(*quality["cached_vs_full"], wobble)
                )
            before = ""
            for order, name in enumerate(names, start=1):
                given = (ttft or {}).get(name)
                spread = 1 + 0.02 * ((trial % 3) - 1)
                time = given[trial - 1] if given is not None else _base_ttft(name) * spread
                share = cure_names.recompute_share(name)
                k = 0 if math.isnan(share) else round(share * b)
                rows.append(
                    {
                        "trial": trial,
                        "cure": name,
                        "order": order,
                        "predecessor": before,
                        **sizes,
                        "recompute_share": share,
                        "recompute_where": cure_names.recompute_where(name),
                        "recompute_tokens": k,
                        "tokens_expected": {"hit": 16, "miss": b + 16}.get(name, k + 16),
                        "ttft_ms": time,
                        "prefill_tokens": k + 16,
                        "prefill_ms": 0.9 * time,
                        "decode_tokens": 0,
                        "decode_ms": 0.0,
                        "overhead_ms": 0.1 * time,
                        "restored_pos_max": keep + a + b - 1,
                        "cache_pos_min": 0,
                        "cache_cells": keep + b + 16 + (a if name == "hit" else 0),
                        "cache_verified": True,
                        "cache_note": "",
                    }
                    | (_quality(*quality[name], wobble) if name != "hit" else _no_quality())
                )
                before = name
    return pd.DataFrame(rows, columns=list(CURE_COLUMNS))


def _quality(kl: float, top1: float, wobble: int = 0) -> dict[str, float]:
    """One prompt's figures: KL within ±SPREAD of ``kl`` (relative), top-1 within ±SPREAD."""
    kl = kl * (1 + SPREAD * wobble)
    top1 = min(1.0, top1 + SPREAD * wobble) if top1 < 1 else top1
    return {
        "kl_mean": kl,
        "kl_p99": math.nan,
        "kl_max": 10 * kl,
        "top1_agreement": top1,
        "rms_dp": kl / 2,
        "first_divergence": 32 if top1 == 1 else 3,
        "quality_positions": 47,
    }


def _no_quality() -> dict[str, float]:
    names = ("kl_mean", "kl_p99", "kl_max", "top1_agreement", "rms_dp", "first_divergence")
    return dict.fromkeys((*names, "quality_positions"), math.nan)


def _write(df: pd.DataFrame, folder: Path) -> list[Path]:
    """One CSV per configuration, named as the workflow names them."""
    paths = []
    for (a, b), group in df.groupby(["size_a", "size_b"], sort=False):
        path = folder / f"cures_phase3b_a{a}_b{b}.csv"
        group.to_csv(path, index=False)
        paths.append(path)
    return paths


def _row(
    summary: pd.DataFrame, cure: str, size_b: int | None = None, keep: int | None = None
) -> pd.Series:
    rows = summary[summary["cure"] == cure]
    if size_b is not None:
        rows = rows[rows["size_b"] == size_b]
    if keep is not None:
        rows = rows[rows["keep_tokens"] == keep]
    assert len(rows) == 1
    return rows.iloc[0]


def _by_key(found: list) -> dict:
    return {v.key: v for v in found}


def _verdicts(df: pd.DataFrame, **boot: int) -> list:
    """Every cure's verdicts from the cures rows, as the summary makes them."""
    return cure_verdicts.verdicts_from_summary(cures.summarize_cures(df, **boot))


# --------------------------------------------------------------------------- summary


def test_intervals_and_recovered_share_hand_computed():
    # Constant hit and miss; the shift's two trials make its bootstrap median 20, 30 or 40
    # ms with probabilities 1/4, 1/2, 1/4, so every 95% percentile bound is an end point.
    df = make_cures(trials=2, ttft={"hit": [10, 10], "miss": [100, 100], "shift": [20, 40]})
    summary = cures.summarize_cures(df, **BOOT)
    shift = _row(summary, "shift")
    assert shift["n"] == 2 and shift["n_unverified"] == 0
    assert (shift["ttft_ms"], shift["ttft_ci_low_ms"], shift["ttft_ci_high_ms"]) == (30, 20, 40)
    assert shift["share_of_miss"] == pytest.approx(0.3)
    assert (shift["share_of_miss_ci_low"], shift["share_of_miss_ci_high"]) == pytest.approx(
        (0.2, 0.4)
    )
    # (100 - 30) / (100 - 10), bounds at cure medians 40 and 20.
    assert shift["recovered"] == pytest.approx(7 / 9)
    assert (shift["recovered_ci_low"], shift["recovered_ci_high"]) == pytest.approx((6 / 9, 8 / 9))

    hit, miss = _row(summary, "hit"), _row(summary, "miss")
    assert hit["share_of_miss"] == pytest.approx(0.1)
    assert (hit["share_of_miss_ci_low"], hit["share_of_miss_ci_high"]) == pytest.approx((0.1, 0.1))
    # The ends are fixed by definition, so they carry no interval.
    assert (hit["recovered"], miss["recovered"], miss["share_of_miss"]) == (1.0, 0.0, 1.0)
    assert math.isnan(hit["recovered_ci_low"]) and math.isnan(miss["share_of_miss_ci_low"])


def test_summary_order_sizes_quality_and_floor():
    df = make_cures([(0, 64, 32), (8, 64, 32), (8, 32, 64)], floor=(0.002, 0.98))
    # Shuffle the rows within each configuration: the order of cures must not depend on it.
    df = pd.concat(
        [g.sample(frac=1, random_state=1) for _, g in df.groupby("size_a", sort=False)],
        ignore_index=True,
    )
    summary = cures.summarize_cures(df, **BOOT)
    assert list(summary.columns) == list(cures.CURE_SUMMARY_COLUMNS)
    names = _names(SHARES)
    assert list(summary["cure"]) == (
        [*names, "cached_vs_full"] + names + [*names, "cached_vs_full"]
    )
    assert list(dict.fromkeys(zip(summary.keep_tokens, summary.size_a, strict=True))) == [
        (0, 64),
        (8, 64),
        (8, 32),
    ]
    head = _row(summary, "shift_head_0.25", size_b=64)
    assert (head["recompute_share"], head["recompute_where"], head["recompute_tokens"]) == (
        0.25,
        "head",
        16,
    )
    assert head["tokens_evaluated"] == 32 and head["n"] == 5
    # Quality: the mean over the prompts, its interval within the prompts' spread.
    assert head["kl_mean"] == pytest.approx(0.01, rel=2 * SPREAD)
    assert 0.01 * (1 - SPREAD) <= head["kl_mean_ci_low"] < head["kl_mean_ci_high"]
    assert head["kl_mean_ci_high"] <= 0.01 * (1 + SPREAD)
    assert head["top1_agreement"] == pytest.approx(0.985, abs=SPREAD)
    assert head["kl_max"] == pytest.approx(10 * 0.01 * (1 + SPREAD))
    assert math.isnan(head["kl_p99"])  # 47 positions: the p99 would be the maximum
    # The floor is the miss's own quality, at the same kept prefix.
    assert head["floor_kl_mean"] == pytest.approx(0.002, rel=2 * SPREAD)
    assert head["floor_top1_agreement"] == pytest.approx(0.98, abs=SPREAD)
    assert head["position_correction"] == "rope"
    hit = _row(summary, "hit", size_b=64)
    assert math.isnan(hit["kl_mean"]) and math.isnan(hit["first_divergence"])
    assert _row(summary, "shift", size_b=32, keep=0)["recompute_share"] == 0.0
    numerics = _row(summary, "cached_vs_full", size_b=32, keep=0)
    assert math.isnan(numerics["ttft_ms"]) and numerics["kl_mean"] == 0.0


def test_unverified_rows_enter_no_statistic(tmp_path):
    df = make_cures(trials=4)
    clean = cures.summarize_cures(df, **BOOT)
    bad = df[df["cure"] == "shift"].iloc[[0]].copy()  # a shift row, made absurd and unverified
    assert bad["cure"].iloc[0] == "shift"
    bad[["ttft_ms", "kl_mean", "top1_agreement"]] = [1e6, 9.0, 0.0]
    bad[["cache_verified", "cache_note"]] = [False, "the call evaluated 99 tokens, expected 16"]
    # All of one cure unverified: it is reported, with nothing measured.
    lost = df[df["cure"] == "shift_tail_0.5"].assign(cache_verified=False)
    mixed = pd.concat([df[df["cure"] != "shift_tail_0.5"], bad, lost], ignore_index=True)
    loaded = load_cures(_write(mixed, tmp_path))
    assert set(loaded["cache_verified"]) == {"True", "False"}  # read back as text
    summary = cures.summarize_cures(loaded, **BOOT)

    shift, before = _row(summary, "shift"), _row(clean, "shift")
    assert (shift["n"], shift["n_unverified"]) == (4, 1)
    numbers = ["ttft_ms", "ttft_ci_low_ms", "ttft_ci_high_ms", "recovered", "recovered_ci_low"]
    numbers += ["recovered_ci_high", "share_of_miss", "kl_mean", "top1_agreement"]
    assert shift[numbers].tolist() == pytest.approx(before[numbers].tolist())
    r50 = _row(summary, "shift_tail_0.5")
    assert (r50["n"], r50["n_unverified"]) == (0, 4)
    assert math.isnan(r50["ttft_ms"]) and math.isnan(r50["kl_mean"])
    found = _by_key(cure_verdicts.verdicts_from_summary(summary))
    assert found["shift_tail_0.5_s8_recovers"].status == UNDETERMINED
    assert found["shift_tail_0.5_s8_exact"].status == UNDETERMINED

    text = to_markdown(Document("t", [report.section(loaded, summary=summary)]))
    assert "5 cure trial(s) failed cache verification" in text


# --------------------------------------------------------------------------- verdicts


def _recovery(df: pd.DataFrame, cure: str = "shift", keep: int = 8) -> object:
    return _by_key(_verdicts(df, **BOOT))[f"{cure}_s{keep}_recovers"]


def test_recovery_verdict_supported_and_not_supported():
    found = _by_key(_verdicts(make_cures(), **BOOT))
    # shift: 15 ms of 10..100 → 94% recovered; +50%: 55 ms → 50%, its CI straddles 0.5.
    assert found["shift_s8_recovers"].status == SUPPORTED
    assert found["shift_tail_0.1_s8_recovers"].status == SUPPORTED
    assert found["shift_head_0.1_s8_recovers"].status == SUPPORTED
    assert found["shift_tail_0.5_s8_recovers"].status == UNDETERMINED
    reason = found["shift_s8_recovers"].reason
    assert "94% [" in reason and "recovered" in reason and "50%" in reason
    assert found["shift_s8_recovers"].evidence["min_recovered_ci_low"] > 0.5

    slow = make_cures(ttft={"shift": [94, 95, 96, 95, 94]})
    verdict = _recovery(slow)
    assert verdict.status == NOT_SUPPORTED
    assert verdict.evidence["max_recovered_ci_high"] < 0.5
    assert "→ not supported" in verdict.reason


def test_recovery_verdict_undetermined():
    wide = make_cures(trials=3, ttft={"shift": [20, 55, 90]})
    assert _recovery(wide).status == UNDETERMINED  # the CI straddles 0.5
    # One trial: no interval, so never NOT SUPPORTED, however slow the cure looks.
    single = make_cures(trials=1, ttft={"shift": [99.0]})
    verdict = _recovery(single)
    assert verdict.status == UNDETERMINED
    assert "n/a" in verdict.reason
    # Every configuration must agree: one undefined interval leaves a supported one undetermined,
    # but one that lies below 0.5 decides against the cure.
    good = make_cures([(8, 64, 32)])
    assert _recovery(pd.concat([good, single], ignore_index=True)).status == UNDETERMINED
    bad = make_cures([(8, 32, 64)], ttft={"shift": [94, 95, 96, 95, 94]})
    mixed = pd.concat([good, single, bad], ignore_index=True)
    assert _recovery(mixed).status == NOT_SUPPORTED
    # Each kept prefix size is its own verdict.
    other = make_cures([(0, 64, 32)], ttft={"shift": [94, 95, 96, 95, 94]})
    both = pd.concat([good, other], ignore_index=True)
    assert _recovery(both, keep=8).status == SUPPORTED
    assert _recovery(both, keep=0).status == NOT_SUPPORTED


def _exact(df: pd.DataFrame, cure: str = "shift", keep: int = 8) -> object:
    return _by_key(_verdicts(df, **BOOT))[f"{cure}_s{keep}_exact"]


def test_quality_verdict_three_outcomes():
    measured = _by_key(_verdicts(make_cures(), **BOOT))
    verdict = measured["shift_s8_exact"]
    assert verdict.status == NOT_SUPPORTED  # top-1 91.5% < 95%, KL 0.075 > 0.05
    assert "top-1 92% [" in verdict.reason and "0.075" in verdict.reason
    assert "over 5 prompts" in verdict.reason
    assert "noise floor" in verdict.reason and "uncorrected" not in verdict.reason
    assert measured["shift_tail_0.5_s8_exact"].status == NOT_SUPPORTED  # KL 0.052 > 0.05
    assert measured["shift_head_0.25_s8_exact"].status == SUPPORTED  # 0.01, 98.5%

    close = make_cures(quality={"shift": (0.01, 0.99)})
    assert _exact(close).status == SUPPORTED
    # An interval that straddles a threshold decides nothing.
    edge = make_cures(quality={"shift": (cures.EXACT_MAX_KL, 0.99)})
    assert _exact(edge).status == UNDETERMINED

    missing = make_cures(quality={"shift": (math.nan, math.nan)})
    assert _exact(missing).status == UNDETERMINED
    # When the exact answer through the cures' path already misses a threshold, the
    # comparison cannot resolve it: undetermined, however far the cure is.
    noisy = make_cures(floor=(0.2, 0.8))
    verdict = _exact(noisy)
    assert verdict.status == UNDETERMINED and "noise floor: top-1 80%" in verdict.reason
    # Any configuration that misses decides against; one without quality alone does not.
    both = pd.concat([close, make_cures([(8, 32, 64)])], ignore_index=True)
    assert _exact(both).status == NOT_SUPPORTED
    gap = pd.concat([close, make_cures([(8, 32, 64)], quality={"shift": (math.nan, math.nan)})])
    assert _exact(gap).status == UNDETERMINED


def test_verdicts_keys_and_uncorrected_label():
    gpt2 = make_cures(
        [(0, 64, 64), (4, 64, 64)], correction="none (absolute positions)", shares=(0.25,)
    )
    found = _verdicts(gpt2, **BOOT)
    expected = []
    for cure in ("shift", "shift_tail_0.25", "shift_head_0.25"):
        for keep in (0, 4):
            expected += [f"{cure}_s{keep}_recovers", f"{cure}_s{keep}_exact"]
    assert [v.key for v in found] == expected
    assert found[0].claim == "Uncorrected shift (S = 0) recovers most of the miss penalty"
    assert found[-1].claim == (
        "Uncorrected shift + recompute 25% (head) (S = 4) answers like a full recompute"
    )
    assert "uncorrected shift" in found[1].reason
    text = to_markdown(Document("t", [report.section(gpt2, **BOOT)]))
    assert "**Uncorrected shift**" in text and "| uncorrected shift |" in text


# --------------------------------------------------------------------------- report


def test_section_and_summary_csv(tmp_path):
    df = load_cures(_write(make_cures([(8, 64, 64), (8, 32, 96)]), tmp_path))
    summary = report.write_cures_summary(df, tmp_path / "out" / "cures_summary.csv", **BOOT)
    written = pd.read_csv(tmp_path / "out" / "cures_summary.csv")
    assert list(written.columns) == list(cures.CURE_SUMMARY_COLUMNS) and len(written) == 20
    assert written["ttft_ms"].tolist() == pytest.approx(
        summary["ttft_ms"].tolist(), rel=1e-5, nan_ok=True
    )
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["cures_summary.csv"]

    sec = report.section(df, summary=summary)
    assert sec.title == report.TITLE
    tables = [b for b in sec.blocks if isinstance(b, Table)]
    assert len(tables) == 2 and tables[0].header == report.HEADER
    assert len(tables[0].rows) == 18  # the numerics rows are a sentence, not table rows
    assert tables[1].header == ["Cure", "S = 8"] and len(tables[1].rows) == 7
    items = [b for b in sec.blocks if isinstance(b, list)][0]
    assert len(items) == 14  # two verdicts for each of the seven cures, at one S
    text = to_markdown(Document("t", [sec]))
    assert "`--cache-reuse N`" in text and "attention sink" in text
    assert "| 64/64, S=8 | shift + recompute 25% (head) | 5 | 32 |" in text
    assert "100% (by definition)" in text and "0% (by definition)" in text
    assert "exact answer through a prefix-cache hit" in text
    assert "**Shift (S = 8) answers like a full recompute**: NOT SUPPORTED." in text
    assert "time: SUPPORTED; quality: NOT SUPPORTED" in text
    assert "not measured" not in text
    assert 'class="verdict no"' in to_html(Document("t", [sec]))


def test_cures_disabled_header_only(tmp_path):
    paths = []
    for a, b in ((64, 64), (32, 96)):
        path = tmp_path / f"cures_phase3b_a{a}_b{b}.csv"
        pd.DataFrame(columns=list(CURE_COLUMNS)).to_csv(path, index=False)
        paths.append(path)
    df = load_cures(paths)
    assert df.empty and list(df.columns) == list(CURE_COLUMNS)
    assert _verdicts(df) == []

    sec = report.section(df)
    assert sec.blocks == [report.NOT_MEASURED]
    assert "were not measured" in to_markdown(Document("t", [sec]))
    report.write_cures_summary(df, tmp_path / "s.csv")
    written = pd.read_csv(tmp_path / "s.csv")
    assert written.empty and list(written.columns) == list(cures.CURE_SUMMARY_COLUMNS)
    cures_plot.plot_cures(df, tmp_path / "p.png", "m")
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC
    # A header-only file next to measured ones contributes nothing.
    measured = _write(make_cures([(0, 16, 16)], trials=2), tmp_path)
    assert len(load_cures([paths[0], *measured])) == 2 * (1 + 9)


@pytest.mark.parametrize(
    ("configs", "trials", "correction"),
    [
        (((8, 64, 64),), 3, "rope"),
        (((0, 64, 32), (0, 32, 64), (8, 48, 48)), 2, "rope"),
        (((0, 64, 64),), 1, "none (absolute positions)"),
    ],
    ids=["1-config", "3-configs", "1-trial-uncorrected"],
)
def test_figure_renders(tmp_path, configs, trials, correction):
    df = make_cures(configs, trials=trials, correction=correction)
    out = tmp_path / "fig" / "cures.png"
    cures_plot.plot_cures(df, out, "SmolLM2-135M", summary=cures.summarize_cures(df, **BOOT))
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["cures.png"]  # no temporary file left


# --------------------------------------------------------------------------- validation


def _csv(tmp_path: Path, df: pd.DataFrame, name: str = "cures_phase3b_a64_b64.csv") -> Path:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.drop(columns=["kl_max"]), r"missing \['kl_max'\]"),
        (lambda d: d.assign(extra=1), r"unexpected \['extra'\]"),
        (lambda d: d[list(reversed(CURE_COLUMNS))], "found them in the order"),
        (lambda d: d.replace({"cure": {"shift": "shfit"}}), r"unknown cure\(s\) \['shfit'\]"),
        (
            lambda d: d.replace({"cure": {"shift": "shift_head_2"}}),
            r"unknown cure\(s\) \['shift_head_2'\]",
        ),
        (
            lambda d: d.assign(ttft_ms=d["ttft_ms"].astype(object).where(d.index != 3, "fast")),
            "column ttft_ms must be numeric, found 'fast' in data row 4",
        ),
        (lambda d: d.assign(cache_verified="maybe"), "cache_verified must be True or False"),
        (lambda d: d.assign(size_b=32), r"the name says size_b = 64, the rows say \[32\]"),
        (
            lambda d: d.assign(size_a=d["size_a"].where(d.index != 0)),
            r"column size_a is empty in data row\(s\) \[1\]",
        ),
    ],
    ids=[
        "missing",
        "unexpected",
        "order",
        "unknown-cure",
        "share-out-of-range",
        "not-numeric",
        "flag",
        "name",
        "no-size",
    ],
)
def test_validation_errors_name_the_file_and_the_problem(tmp_path, change, message):
    path = _csv(tmp_path, change(make_cures(trials=1)))
    with pytest.raises(ValueError, match=message) as err:
        load_cures([path])
    assert str(path) in str(err.value)


def test_validation_of_empty_inputs(tmp_path):
    empty = tmp_path / "cures_phase3b_a1_b2.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=f"{empty}: empty file"):
        load_cures([empty])
    with pytest.raises(ValueError, match="no cures files given"):
        load_cures([])


def test_names_and_labels():
    shares = [cure_names.recompute_share(n) for n in ("shift", "shift_head_0.25", "hit")]
    assert shares[:2] == [0.0, 0.25] and math.isnan(shares[2])
    assert math.isnan(cure_names.recompute_share("shift_tail_x"))
    # The tail's earlier name still reads as the tail.
    assert cure_names.recompute_where("shift_recompute_0.5") == "tail"
    assert cure_names.recompute_share("shift_recompute_0.5") == 0.5
    assert cure_names.recompute_where("shift_head_0.1") == "head"
    names = ["shift_head_0.1", "shift_tail_0.5", "miss", "cached_vs_full", "shift_tail_0.1"]
    names += ["shift", "hit"]
    assert sorted(names, key=cure_names.cure_rank) == [
        "hit",
        "miss",
        "shift",
        "shift_tail_0.1",
        "shift_tail_0.5",
        "shift_head_0.1",
        "cached_vs_full",
    ]
    assert cure_names.cure_label("shift_tail_0.125") == "shift + recompute 12.5% (tail)"
    assert cure_names.cure_label("shift_head_0.5") == "shift + recompute 50% (head)"
    assert cure_names.cure_label("shift", uncorrected=True) == "uncorrected shift"
    assert cure_names.is_known("cached_vs_full") and not cure_names.is_known("noise_floor")


def test_every_name_its_share_place_and_label():
    """Each name the producer writes, read back exactly: its share r of B, where it is
    recomputed, its place in tables and its label; and the names that are not cures."""
    expected = {
        # name: (share, where, rank, label)
        "hit": (math.nan, "", (0, 0.0), "hit"),
        "miss": (math.nan, "", (1, 0.0), "miss (full recompute)"),
        "shift": (0.0, "", (2, 0.0), "shift"),
        "server_cache_reuse": (0.0, "", (2, 1.0), "server cache reuse (KV shift)"),
        "shift_tail_1": (1.0, "tail", (3, 1.0), "shift + recompute 100% (tail)"),
        "shift_head_1e-1": (0.1, "head", (4, 0.1), "shift + recompute 10% (head)"),
        "cached_vs_full": (math.nan, "", (6, 0.0), "exact prefix hit vs full recompute"),
    }
    for name, (share, where, rank, label) in expected.items():
        got = cure_names.recompute_share(name)
        assert got == share or (math.isnan(got) and math.isnan(share)), name
        assert cure_names.recompute_where(name) == where, name
        assert cure_names.cure_rank(name) == rank, name
        assert cure_names.cure_label(name) == label, name
        assert cure_names.is_known(name), name
    # A share outside (0, 1] or not a number is no cure: it sorts last, keeps its name.
    for name in ("shift_tail_0", "shift_tail_1.5", "shift_head_-0.5", "shift_tail_1e", "x"):
        assert not cure_names.is_known(name), name
        assert math.isnan(cure_names.recompute_share(name)), name
        assert cure_names.recompute_where(name) == "", name
        assert cure_names.cure_rank(name) == (5, 0.0), name
        assert cure_names.cure_label(name, uncorrected=True) == name, name
    # Only the shift cures can be uncorrected.
    assert cure_names.cure_label("server_cache_reuse", True) == (
        "uncorrected server cache reuse (KV shift)"
    )
    assert cure_names.cure_label("shift_head_0.25", True) == (
        "uncorrected shift + recompute 25% (head)"
    )
    for name in ("hit", "miss", "cached_vs_full"):
        assert cure_names.cure_label(name, True) == expected[name][3]
    assert [cure_names.is_uncorrected(v) for v in ("none", " None (absolute) ", "rope", 0)] == [
        True,
        True,
        False,
        False,
    ]
    assert cure_names.config_label(8.0, 64, 32.0) == "64/32, S=8"


def test_outcomes_at_the_thresholds_and_with_a_bound_missing():
    """Each rule's words at its edge: the recovered share must lie *above* or *below*
    RECOVER_MIN_SHARE (a bound on it decides nothing), top-1 and KL *at or above*/*at or
    below* their thresholds for supported, and *below*/*above* them against; the noise
    floor misses when either of its numbers does; an interval with one bound undefined
    decides nothing."""
    share, kl_max, top1_min = cures.RECOVER_MIN_SHARE, cures.EXACT_MAX_KL, cures.EXACT_MIN_TOP1

    def recovery(low: float, high: float) -> str:
        row = pd.Series({"recovered_ci_low": low, "recovered_ci_high": high})
        return cure_verdicts._recovery_outcome(row)

    assert recovery(share + 0.01, 0.9) == SUPPORTED
    assert recovery(share, 0.9) == UNDETERMINED
    assert recovery(0.1, share - 0.01) == NOT_SUPPORTED
    assert recovery(0.1, share) == UNDETERMINED
    assert recovery(math.nan, 0.2) == UNDETERMINED
    assert recovery(0.6, math.nan) == UNDETERMINED

    def exact(kl=(0.0, 0.01), top1=(0.97, 0.99), floor=(0.0, 1.0)) -> str:
        row = {"kl_mean_ci_low": kl[0], "kl_mean_ci_high": kl[1]}
        row |= {"top1_agreement_ci_low": top1[0], "top1_agreement_ci_high": top1[1]}
        row |= {"floor_kl_mean": floor[0], "floor_top1_agreement": floor[1]}
        return cure_verdicts._exact_outcome(pd.Series(row))

    assert exact() == SUPPORTED
    assert exact(kl=(0.0, kl_max)) == SUPPORTED
    assert exact(top1=(top1_min, 0.99)) == SUPPORTED
    assert exact(kl=(0.0, math.nan)) == UNDETERMINED
    assert exact(top1=(math.nan, 0.99)) == UNDETERMINED
    assert exact(kl=(kl_max, 0.1)) == UNDETERMINED
    assert exact(kl=(kl_max + 0.001, 0.1)) == NOT_SUPPORTED
    assert exact(top1=(0.9, top1_min)) == UNDETERMINED
    assert exact(top1=(0.9, top1_min - 0.001)) == NOT_SUPPORTED
    # the floor at a threshold still resolves it; past either one it does not
    assert exact(floor=(kl_max, top1_min)) == SUPPORTED
    assert exact(floor=(kl_max + 0.001, 1.0)) == UNDETERMINED
    assert exact(floor=(0.0, top1_min - 0.001)) == UNDETERMINED
    assert exact(kl=(0.2, 0.3), floor=(0.0, top1_min - 0.001)) == UNDETERMINED
