"""Per-configuration summary, cross-configuration fits and verdicts on the seed's claims.

The seed stated three conclusions from medians alone: hit TTFT is constant, miss TTFT
grows linearly with B, and decode throughput is unaffected by the cache. This module
recomputes the seed's table from the results CSVs and decides each claim with stated
thresholds, so that a reader sees which numbers support which sentence.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kvcache_exp import stats
from kvcache_exp.columns import CONDITIONS, EXTRA_RESULT_COLUMNS, SEED_RESULT_COLUMNS
from kvcache_exp.outputs import atomic_open

#: Claim 1 counts as supported when the hit-TTFT slope's 95% CI contains 0, or when the
#: change the slope predicts over the tested B range is below this share of median hit TTFT.
HIT_CONSTANT_MAX_CHANGE = 0.10
#: Claim 2 needs a positive slope whose 95% CI excludes 0 and at least this R².
MISS_LINEAR_MIN_R2 = 0.90
#: ...measured at this many distinct numbers of tokens recomputed (two points always fit).
MISS_LINEAR_MIN_CONFIGS = 3
#: Claim 3 counts as supported when the 95% CI of median decode tok/s miss/hit lies inside.
DECODE_RATIO_BOUNDS = (0.90, 1.10)

SUPPORTED, NOT_SUPPORTED, UNDETERMINED = "supported", "not supported", "undetermined"

#: summary.csv's columns; the first five are the seed's table (hit/miss are medians).
SUMMARY_COLUMNS: tuple[str, ...] = (
    "size_a",
    "size_b",
    "hit_ttft_ms",
    "miss_ttft_ms",
    "degradation_pct",
    "degradation_ci_low",
    "degradation_ci_high",
    "n_hit",
    "n_miss",
    "hit_ttft_mean_ms",
    "hit_ttft_std_ms",
    "hit_ttft_ci_low_ms",
    "hit_ttft_ci_high_ms",
    "miss_ttft_mean_ms",
    "miss_ttft_std_ms",
    "miss_ttft_ci_low_ms",
    "miss_ttft_ci_high_ms",
    "mannwhitney_u",
    "mannwhitney_p",
    "hit_tokens_recomputed",
    "miss_tokens_recomputed",
    "hit_throughput_tok_s",
    "miss_throughput_tok_s",
    "hit_decode_tok_s",
    "miss_decode_tok_s",
    "decode_ratio",
    "decode_ratio_ci_low",
    "decode_ratio_ci_high",
    "hit_prefill_tok_s",
    "miss_prefill_tok_s",
    "n_unverified",
)

_RESULTS_NAME = re.compile(r"_a(?P<a>\d+)_b(?P<b>\d+)\.csv$")
_DEGRADATION_CI = ("degradation_ci_low", "degradation_ci_high")
_TEXT_COLUMNS = frozenset({"condition", "finish_reason", "cache_verified", "cache_note"})


@dataclass(frozen=True)
class Verdict:
    """The decision on one of the seed's claims, with the sentence that justifies it."""

    key: str
    claim: str
    status: str
    reason: str
    evidence: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- loading


def load_results(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Concatenate results CSVs after checking that each keeps the seed's columns first.

    CSVs from the seed itself (without our extra columns) still load: missing extras
    become NaN and size_a/size_b are read from the file name, so old runs can be
    summarised next to new ones.
    """
    frames = [_read_results(Path(p)) for p in paths]
    if not frames:
        raise ValueError("load_results: no results files given")
    return pd.concat(frames, ignore_index=True)


def _read_results(path: Path) -> pd.DataFrame:
    """Read and validate one results CSV."""
    df = pd.read_csv(path)
    head = tuple(df.columns[: len(SEED_RESULT_COLUMNS)])
    if head != SEED_RESULT_COLUMNS:
        raise ValueError(
            f"{path}: the first columns must be the seed's {list(SEED_RESULT_COLUMNS)} "
            f"in that order, found {list(head)}"
        )
    bad = sorted(set(df["condition"].astype(str)) - set(CONDITIONS))
    if bad:
        raise ValueError(f"{path}: unknown condition(s) {bad}; expected {list(CONDITIONS)}")
    if len(df) and not pd.api.types.is_numeric_dtype(df["ttft_ms"]):
        raise ValueError(f"{path}: column ttft_ms is not numeric")
    return _complete_columns(df, path)


def _complete_columns(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Add missing extra columns (NaN, sizes from the file name) and coerce numbers."""
    df = df.copy()
    for name in ("size_a", "size_b"):
        if name not in df.columns:
            df[name] = _size_from_name(path, name[-1])
    for name in EXTRA_RESULT_COLUMNS:
        if name not in df.columns:
            df[name] = math.nan
        elif name not in _TEXT_COLUMNS:
            df[name] = pd.to_numeric(df[name], errors="coerce")
    return df


def _size_from_name(path: Path, part: str) -> int:
    """size_a or size_b from a seed-style name such as results_phase3b_a512_b256.csv."""
    match = _RESULTS_NAME.search(path.name)
    if not match:
        raise ValueError(
            f"{path}: no size_{part} column and the name does not end in _a<A>_b<B>.csv"
        )
    return int(match.group(part))


def _verified_flags(values: pd.Series) -> pd.Series:
    """cache_verified as True/False/NaN whether it was read as bool or as text."""
    text = values.astype(str).str.strip().str.lower()
    return text.map({"true": True, "1": True, "false": False, "0": False})


# --------------------------------------------------------------------------- per configuration


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (size_a, size_b), in the order the results came in."""
    rows = [
        _config_row(int(a), int(b), group)
        for (a, b), group in df.groupby(["size_a", "size_b"], sort=False)
    ]
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def _config_row(size_a: int, size_b: int, group: pd.DataFrame) -> dict[str, float]:
    """All summary numbers of one configuration."""
    hit = group[group["condition"] == "hit"]
    miss = group[group["condition"] == "miss"]
    row: dict[str, float] = {"size_a": size_a, "size_b": size_b}
    row |= _ttft_stats(hit["ttft_ms"], miss["ttft_ms"])
    row |= _throughput_stats(hit, miss)
    row["n_unverified"] = int(_verified_flags(group["cache_verified"]).eq(False).sum())
    return row


def _ttft_stats(hit: pd.Series, miss: pd.Series) -> dict[str, float]:
    """Medians, spread, intervals, degradation and the rank test of hit vs miss TTFT."""
    row: dict[str, float] = {}
    for name, values in (("hit", hit), ("miss", miss)):
        desc, ci = stats.describe(values), stats.median_ci(values)
        row[f"n_{name}"] = int(desc["n"])
        row[f"{name}_ttft_ms"] = desc["median"]
        row[f"{name}_ttft_mean_ms"] = desc["mean"]
        row[f"{name}_ttft_std_ms"] = desc["std"]
        row[f"{name}_ttft_ci_low_ms"], row[f"{name}_ttft_ci_high_ms"] = ci.low, ci.high
    deg = stats.degradation_ci(hit, miss)
    row["degradation_pct"] = deg.estimate
    row["degradation_ci_low"], row["degradation_ci_high"] = deg.low, deg.high
    test = stats.mann_whitney(hit, miss)
    row["mannwhitney_u"], row["mannwhitney_p"] = test.u, test.p
    return row


def _throughput_stats(hit: pd.DataFrame, miss: pd.DataFrame) -> dict[str, float]:
    """Generation, decode and prefill throughput per condition, and the decode ratio."""
    row: dict[str, float] = {}
    for name, rows in (("hit", hit), ("miss", miss)):
        row[f"{name}_tokens_recomputed"] = stats.median(rows["tokens_recomputed"])
        row[f"{name}_throughput_tok_s"] = stats.median(rows["throughput_tok_s"])
        row[f"{name}_decode_tok_s"] = stats.median(rows["decode_tok_s"])
        row[f"{name}_prefill_tok_s"] = stats.prefill_tok_s(rows)
    ratio = stats.ratio_ci(hit["decode_tok_s"], miss["decode_tok_s"])
    row["decode_ratio"] = ratio.estimate
    row["decode_ratio_ci_low"], row["decode_ratio_ci_high"] = ratio.low, ratio.high
    return row


# --------------------------------------------------------------------------- across configurations


def fits(df: pd.DataFrame) -> dict[str, stats.LineFit]:
    """The three least-squares lines across configurations, keyed by a short name."""
    return {
        "miss_ttft_vs_recomputed": stats.fit_miss_ttft_vs_recomputed(df),
        "miss_prefill_vs_recomputed": stats.fit_prefill_vs_recomputed(df),
        "hit_ttft_vs_b": stats.fit_hit_ttft_vs_b(df),
    }


def _distinct(df: pd.DataFrame, condition: str, column: str) -> np.ndarray:
    """Distinct finite values of ``column`` among rows of ``condition`` with a TTFT."""
    rows = df[(df["condition"] == condition) & df["ttft_ms"].notna()]
    values = pd.to_numeric(rows[column], errors="coerce").dropna()
    return np.unique(values.to_numpy(dtype=float))


def verdicts(df: pd.DataFrame) -> list[Verdict]:
    """Decide the seed's three claims on all trials of all configurations."""
    return [_verdict_hit_constant(df), _verdict_miss_linear(df), _verdict_decode(df)]


def _verdict_hit_constant(df: pd.DataFrame) -> Verdict:
    """Claim 1: hit TTFT does not depend on the configuration."""
    claim = "Cache-hit TTFT is constant across configurations"
    b_values = _distinct(df, "hit", "size_b")
    if b_values.size < 2:
        reason = f"needs hit trials at 2 or more distinct B values, found {b_values.size}."
        return Verdict("hit_constant", claim, UNDETERMINED, reason)
    fit = stats.fit_hit_ttft_vs_b(df)
    hit_median = stats.median(df.loc[df["condition"] == "hit", "ttft_ms"])
    b_min, b_max = float(b_values.min()), float(b_values.max())
    change = abs(fit.slope) * (b_max - b_min)
    share = change / hit_median if hit_median > 0 else math.inf
    ok = fit.slope_interval.contains(0.0) or share < HIT_CONSTANT_MAX_CHANGE
    reason = (
        f"slope of hit TTFT vs B = {fit.slope:.4g} ms/token "
        f"(95% CI {_ci(fit.slope_ci_low, fit.slope_ci_high, '.4g')}, {fit.n} trials); "
        f"over B = {b_min:g} to {b_max:g} it predicts a change of {change:.3g} ms, "
        f"{share * 100:.1f}% of the median hit TTFT ({hit_median:.3g} ms). Threshold: "
        f"supported when the CI contains 0 or the change is below "
        f"{HIT_CONSTANT_MAX_CHANGE * 100:.0f}% of the median hit TTFT."
    )
    evidence = {
        "slope_ms_per_token": fit.slope,
        "slope_ci_low": fit.slope_ci_low,
        "slope_ci_high": fit.slope_ci_high,
        "predicted_change_ms": change,
        "change_share": share,
        "hit_median_ms": hit_median,
    }
    return Verdict("hit_constant", claim, SUPPORTED if ok else NOT_SUPPORTED, reason, evidence)


def _verdict_miss_linear(df: pd.DataFrame) -> Verdict:
    """Claim 2: miss TTFT grows linearly with the tokens that must be recomputed."""
    claim = "Cache-miss TTFT grows linearly with B (the tokens recomputed)"
    points = _distinct(df, "miss", "tokens_recomputed")
    if points.size < MISS_LINEAR_MIN_CONFIGS:
        reason = (
            f"not enough configurations: {points.size} distinct numbers of tokens recomputed, "
            f"a test of linearity needs at least {MISS_LINEAR_MIN_CONFIGS}."
        )
        return Verdict("miss_linear", claim, UNDETERMINED, reason)
    fit = stats.fit_miss_ttft_vs_recomputed(df)
    ok = fit.slope > 0 and fit.slope_ci_low > 0 and fit.r_squared >= MISS_LINEAR_MIN_R2
    reason = (
        f"miss TTFT = {fit.slope:.4g} ms/token x tokens recomputed "
        f"{'+' if fit.intercept >= 0 else '-'} {abs(fit.intercept):.4g} ms, "
        f"slope 95% CI {_ci(fit.slope_ci_low, fit.slope_ci_high, '.4g')}, "
        f"R² = {fit.r_squared:.3f} over {fit.n} trials at {points.size} token counts. "
        f"Threshold: supported when the slope's CI lies above 0 and R² >= "
        f"{MISS_LINEAR_MIN_R2:.2f}."
    )
    evidence = {
        "slope_ms_per_token": fit.slope,
        "slope_ci_low": fit.slope_ci_low,
        "slope_ci_high": fit.slope_ci_high,
        "intercept_ms": fit.intercept,
        "r_squared": fit.r_squared,
    }
    return Verdict("miss_linear", claim, SUPPORTED if ok else NOT_SUPPORTED, reason, evidence)


def _verdict_decode(df: pd.DataFrame) -> Verdict:
    """Claim 3: decode throughput is the same after a hit and after a miss."""
    claim = "Decode throughput is unaffected by cache state"
    ratio = stats.decode_ratio(df)
    low, high = DECODE_RATIO_BOUNDS
    if not math.isfinite(ratio.estimate):
        reason = "no decode throughput (decode_tok_s) was recorded for both conditions."
        return Verdict("decode_unaffected", claim, UNDETERMINED, reason)
    ok = low <= ratio.low and ratio.high <= high
    reason = (
        f"median decode tok/s miss/hit = {ratio.estimate:.3f} "
        f"(95% bootstrap CI {_ci(ratio.low, ratio.high, '.3f')}), all configurations pooled. "
        f"Threshold: supported when the whole CI lies within [{low:.2f}, {high:.2f}], "
        f"i.e. any effect is smaller than {(high - 1) * 100:.0f}%."
    )
    if not ok and ratio.estimate > 1:
        reason += (
            " Note: a miss decodes with A's tokens gone from its context, so each decoded "
            "token attends over fewer cached tokens; a faster miss reflects context length "
            "rather than the cache state itself."
        )
    evidence = {"ratio": ratio.estimate, "ratio_ci_low": ratio.low, "ratio_ci_high": ratio.high}
    return Verdict("decode_unaffected", claim, SUPPORTED if ok else NOT_SUPPORTED, reason, evidence)


# --------------------------------------------------------------------------- markdown


def _num(value: float, fmt: str, unit: str = "") -> str:
    """A number with its unit, or n/a when it is not defined."""
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):{fmt}}{unit}"


def _ci(low: float, high: float, fmt: str, unit: str = "") -> str:
    """A confidence interval as [low, high], or n/a when it is not defined."""
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        return "n/a"
    return f"[{float(low):{fmt}}{unit}, {float(high):{fmt}}{unit}]"


def _with_ci(row: pd.Series, est: str, low: str, high: str, fmt: str, unit: str = "") -> str:
    """An estimate from ``row`` followed by its interval, e.g. ``28.1 [27.9, 28.4]``."""
    estimate = _num(row[est], fmt, unit)
    return estimate if estimate == "n/a" else f"{estimate} {_ci(row[low], row[high], fmt, unit)}"


def _config(row: pd.Series) -> str:
    """The seed's configuration label, e.g. ``512 / 256``."""
    return f"{int(row['size_a'])} / {int(row['size_b'])}"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _seed_table(summary: pd.DataFrame) -> list[str]:
    """The seed's "TTFT Degradation by Configuration" table, from medians."""
    rows = [
        [
            _config(r),
            _num(r["hit_ttft_ms"], ".1f", " ms"),
            _num(r["miss_ttft_ms"], ".1f", " ms"),
            _num(r["degradation_pct"], "+.0f", "%"),
        ]
        for _, r in summary.iterrows()
    ]
    header = ["Config (A/B)", "Cache Hit TTFT", "Cache Miss TTFT", "Degradation"]
    return ["## TTFT Degradation by Configuration", "", *_table(header, rows)]


def _interval_table(summary: pd.DataFrame) -> list[str]:
    """Medians with bootstrap intervals, spread and the Mann-Whitney test."""
    rows = [
        [
            _config(r),
            f"{int(r['n_hit'])} / {int(r['n_miss'])}",
            _with_ci(r, "hit_ttft_ms", "hit_ttft_ci_low_ms", "hit_ttft_ci_high_ms", ".1f"),
            _with_ci(r, "miss_ttft_ms", "miss_ttft_ci_low_ms", "miss_ttft_ci_high_ms", ".1f"),
            f"{_num(r['hit_ttft_mean_ms'], '.1f')} ± {_num(r['hit_ttft_std_ms'], '.1f')}",
            f"{_num(r['miss_ttft_mean_ms'], '.1f')} ± {_num(r['miss_ttft_std_ms'], '.1f')}",
            _with_ci(r, "degradation_pct", *_DEGRADATION_CI, "+.0f", "%"),
            _num(r["mannwhitney_u"], "g"),
            _num(r["mannwhitney_p"], ".3g"),
        ]
        for _, r in summary.iterrows()
    ]
    header = [
        "Config (A/B)",
        "n hit / miss",
        "Hit median ms [95% CI]",
        "Miss median ms [95% CI]",
        "Hit mean ± sd ms",
        "Miss mean ± sd ms",
        "Degradation [95% CI]",
        "Mann-Whitney U",
        "p (two-sided)",
    ]
    intro = (
        "Medians with 95% percentile-bootstrap intervals "
        f"({stats.DEFAULT_RESAMPLES:,} resamples, fixed seed); degradation resamples hit and "
        "miss independently; U is the hit sample's statistic."
    )
    return ["## TTFT per configuration, with uncertainty", "", intro, "", *_table(header, rows)]


def _fits_section(line_fits: dict[str, stats.LineFit]) -> list[str]:
    """The least-squares lines across configurations."""
    labels = {
        "miss_ttft_vs_recomputed": "Miss TTFT (ms) vs tokens recomputed",
        "miss_prefill_vs_recomputed": "Miss prefill ms (llama.cpp) vs tokens recomputed",
        "hit_ttft_vs_b": "Hit TTFT (ms) vs B",
    }
    rows = [
        [
            labels[key],
            str(fit.n),
            f"{_num(fit.slope, '.4g')} {_ci(fit.slope_ci_low, fit.slope_ci_high, '.4g')}",
            _num(fit.intercept, ".4g"),
            _num(fit.r_squared, ".4f"),
        ]
        for key, fit in line_fits.items()
    ]
    header = ["Fit (every trial)", "Points", "Slope ms/token [95% CI]", "Intercept ms", "R²"]
    intro = "Ordinary least squares over every trial; slope intervals from the t distribution."
    return ["## Fits across configurations", "", intro, "", *_table(header, rows)]


def _throughput_section(summary: pd.DataFrame, pooled: stats.Interval) -> list[str]:
    """Generation, decode and prefill throughput, and the decode ratio miss/hit."""
    rows = [
        [
            _config(r),
            f"{_num(r['hit_throughput_tok_s'], '.1f')} / {_num(r['miss_throughput_tok_s'], '.1f')}",
            f"{_num(r['hit_decode_tok_s'], '.1f')} / {_num(r['miss_decode_tok_s'], '.1f')}",
            _with_ci(r, "decode_ratio", "decode_ratio_ci_low", "decode_ratio_ci_high", ".3f"),
            f"{_num(r['hit_prefill_tok_s'], '.0f')} / {_num(r['miss_prefill_tok_s'], '.0f')}",
        ]
        for _, r in summary.iterrows()
    ]
    header = [
        "Config (A/B)",
        "Generation tok/s hit / miss",
        "Decode tok/s hit / miss",
        "Decode ratio miss/hit [95% CI]",
        "Prefill tok/s hit / miss",
    ]
    pooled_line = (
        f"All configurations pooled: decode ratio miss/hit = {_num(pooled.estimate, '.3f')} "
        f"{_ci(pooled.low, pooled.high, '.3f')}."
    )
    return ["## Throughput", "", *_table(header, rows), "", pooled_line]


def _verdicts_section(found: list[Verdict]) -> list[str]:
    """One bullet per claim with its status and the numbers that decided it."""
    lines = ["## Verdicts on the seed's claims", ""]
    return lines + [f"- **{v.claim}**: {v.status.upper()}. {v.reason}" for v in found]


def _verification_note(summary: pd.DataFrame) -> list[str]:
    """A warning when rows failed cache verification; their numbers are included above."""
    unverified = int(summary["n_unverified"].sum())
    if unverified == 0:
        return []
    return [
        f"> **Warning:** {unverified} trial(s) failed cache verification (`cache_verified` "
        "is False); they are included in every number below.",
        "",
    ]


def render_markdown(df: pd.DataFrame, model_name: str) -> str:
    """The whole summary.md for the results in ``df``."""
    summary = summarize(df)
    parts = [
        f"# KV-cache prefix invalidation: {model_name}",
        "",
        *_verification_note(summary),
        *_seed_table(summary),
        "",
        *_interval_table(summary),
        "",
        *_fits_section(fits(df)),
        "",
        *_throughput_section(summary, stats.decode_ratio(df)),
        "",
        *_verdicts_section(verdicts(df)),
    ]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- files


def _write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write text atomically (temporary file, flush, fsync, rename), as every output is."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_summary(
    result_paths: Iterable[str | os.PathLike[str]],
    out_csv: str | os.PathLike[str],
    out_md: str | os.PathLike[str],
    model_name: str,
) -> None:
    """Write summary.csv (one row per configuration) and summary.md from results CSVs."""
    df = load_results(result_paths)
    with atomic_open(out_csv, "w") as fh:
        summarize(df).to_csv(fh, index=False, float_format="%.6g")
    _write_text(out_md, render_markdown(df, model_name))
