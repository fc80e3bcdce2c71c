"""The summary of a run: ``summary.csv``, ``summary.md`` and the report's summary page.

Numbers come from :mod:`kvcache_exp.analysis`; this module arranges them into one
:class:`~kvcache_exp.report.document.Document` and writes it out as Markdown and HTML.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from kvcache_exp import provenance
from kvcache_exp.analysis import stats, trials
from kvcache_exp.analysis.cures import summarize_cures
from kvcache_exp.analysis.formatting import ci, num, with_ci
from kvcache_exp.analysis.load import load_cures, load_results
from kvcache_exp.analysis.tables import fits, summarize
from kvcache_exp.analysis.verdicts import Verdict, verdicts
from kvcache_exp.outputs import atomic_open
from kvcache_exp.report import pages
from kvcache_exp.report.cures import section as cures_section
from kvcache_exp.report.cures import write_cures_summary
from kvcache_exp.report.document import Document, Section, Table, VerdictItem, to_html, to_markdown


def _config(row: pd.Series) -> str:
    """The seed's configuration label, e.g. ``512 / 256``."""
    return f"{int(row['size_a'])} / {int(row['size_b'])}"


def _row_ci(row: pd.Series, est: str, low: str, high: str, fmt: str, unit: str = "") -> str:
    return with_ci(row[est], row[low], row[high], fmt, unit)


def seed_table(summary: pd.DataFrame) -> Section:
    """The seed's "TTFT Degradation by Configuration" table, from medians."""
    rows = [
        [
            _config(r),
            num(r["hit_ttft_ms"], ".1f", " ms"),
            num(r["miss_ttft_ms"], ".1f", " ms"),
            num(r["degradation_pct"], "+.0f", "%"),
        ]
        for _, r in summary.iterrows()
    ]
    header = ["Config (A/B)", "Cache Hit TTFT", "Cache Miss TTFT", "Degradation"]
    return Section("TTFT Degradation by Configuration", [Table(header, rows)], priority=0)


def interval_table(summary: pd.DataFrame) -> Section:
    """Medians with bootstrap intervals, spread and the Mann-Whitney test."""
    rows = [
        [
            _config(r),
            f"{int(r['n_hit'])} / {int(r['n_miss'])}",
            _row_ci(r, "hit_ttft_ms", "hit_ttft_ci_low_ms", "hit_ttft_ci_high_ms", ".1f"),
            _row_ci(r, "miss_ttft_ms", "miss_ttft_ci_low_ms", "miss_ttft_ci_high_ms", ".1f"),
            f"{num(r['hit_ttft_mean_ms'], '.1f')} ± {num(r['hit_ttft_std_ms'], '.1f')}",
            f"{num(r['miss_ttft_mean_ms'], '.1f')} ± {num(r['miss_ttft_std_ms'], '.1f')}",
            _row_ci(r, "degradation_pct", "degradation_ci_low", "degradation_ci_high", "+.0f", "%"),
            num(r["mannwhitney_u"], "g"),
            num(r["mannwhitney_p"], ".3g"),
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
        f"Medians with {stats.CONFIDENCE:.0%} percentile-bootstrap intervals "
        f"({stats.RESAMPLES:,} resamples, fixed seed; each condition resampled on its own). "
        f"Every figure uses the verified trials, and {trials.outlier_rule()}, as for the "
        "verdicts (how many is in the verdicts' table). "
        "The degradation is (median miss / median hit − 1) · 100, with the interval of the "
        "verdicts' miss/hit ratio. U is the hit sample's statistic."
    )
    return Section("TTFT per configuration, with uncertainty", [intro, Table(header, rows)])


def fits_section(line_fits: dict[str, stats.LineFit]) -> Section:
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
            f"{num(fit.slope, '.4g')} {ci(fit.slope_ci_low, fit.slope_ci_high, '.4g')}",
            num(fit.intercept, ".4g"),
            num(fit.r_squared, ".4f"),
        ]
        for key, fit in line_fits.items()
    ]
    header = ["Fit (every kept trial)", "Points", "Slope ms/token [95% CI]", "Intercept ms", "R²"]
    intro = (
        "Ordinary least squares over every kept trial (slow outliers set aside); slope "
        "intervals from the t distribution."
    )
    return Section("Fits across configurations", [intro, Table(header, rows)])


def throughput_section(summary: pd.DataFrame, pooled: stats.Interval) -> Section:
    """Generation, decode and prefill throughput, and the decode ratio miss/hit.

    ``pooled`` is the decode verdict's ratio over all configurations, so that the section
    and the verdict print one interval for it.
    """
    rows = [
        [
            _config(r),
            f"{num(r['hit_throughput_tok_s'], '.1f')} / {num(r['miss_throughput_tok_s'], '.1f')}",
            f"{num(r['hit_decode_tok_s'], '.1f')} / {num(r['miss_decode_tok_s'], '.1f')}",
            _row_ci(r, "decode_ratio", "decode_ratio_ci_low", "decode_ratio_ci_high", ".3f"),
            f"{num(r['hit_prefill_tok_s'], '.0f')} / {num(r['miss_prefill_tok_s'], '.0f')}",
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
        f"All configurations pooled: decode ratio miss/hit = {num(pooled.estimate, '.3f')} "
        f"{ci(pooled.low, pooled.high, '.3f')}."
    )
    return Section("Throughput", [Table(header, rows), pooled_line])


def verdicts_section(found: list[Verdict], summary: pd.DataFrame) -> Section:
    """One item per claim with its status and the numbers that decided it, then the main
    hypothesis in each configuration."""
    items = [VerdictItem(v.claim, v.status, v.reason) for v in found]
    rows = [
        [
            _config(r),
            str(r["miss_costlier"]).upper(),
            with_ci(r["cost_ratio"], r["cost_ratio_ci_low"], r["cost_ratio_ci_high"], ".3g"),
            num(r["p_miss_slower"], ".2g"),
            num(r["p_miss_slower_adjusted"], ".2g"),
            num(r["n_set_aside"], ".0f"),
        ]
        for _, r in summary.iterrows()
    ]
    header = [
        "Config (A/B)",
        "A miss costs more",
        "Miss/hit TTFT [95% CI]",
        "p (miss slower)",
        "p adjusted (Holm-Šidák)",
        "Slow trials set aside",
    ]
    intro = (
        "Each verdict is SUPPORTED, NOT SUPPORTED or UNDETERMINED (the data cannot tell); "
        "unverified trials never enter it. The main hypothesis in each configuration:"
    )
    return Section(
        "Verdicts on the hypothesis and the seed's claims",
        [items, intro, Table(header, rows)],
        priority=1,
    )


def build(
    df: pd.DataFrame,
    model_name: str,
    warnings: list[str] | None = None,
    extra: list[Section] | None = None,
) -> Document:
    """The whole summary of the results in ``df``.

    Trials that failed cache verification are counted but enter no statistic and no
    verdict: their numbers do not measure what the design says.
    """
    summary = summarize(df)
    notes = list(warnings or [])
    unverified = int(summary["n_unverified"].sum())
    if unverified:
        notes.append(
            f"{unverified} trial(s) failed cache verification (`cache_verified` is False); "
            "they are left out of every number and verdict below."
        )
    found = verdicts(df)
    sections = [
        seed_table(summary),
        interval_table(summary),
        fits_section(fits(df)),
        throughput_section(summary, _pooled_decode_ratio(found)),
        verdicts_section(found, summary),
        *(extra or []),
    ]
    return Document(f"KV-cache prefix invalidation: {model_name}", sections, notes)


def _pooled_decode_ratio(found: list[Verdict]) -> stats.Interval:
    """The decode verdict's median decode tok/s miss / hit, all configurations pooled."""
    evidence = next((v.evidence for v in found if v.key == "decode_unaffected"), {})
    return stats.Interval(
        *(evidence.get(k, math.nan) for k in ("ratio", "ratio_ci_low", "ratio_ci_high"))
    )


class PoolingError(ValueError):
    """Configurations measured under different conditions were about to be pooled."""


def provenance_warnings(
    record_paths: Iterable[str | os.PathLike[str]], allow_mixed: bool
) -> list[str]:
    """Refuse (or, when allowed, warn) when the experiments' provenance records differ."""
    records = {Path(p).stem: provenance.read_json(p) for p in record_paths}
    problems = provenance.pooling_problems(records)
    if problems and not allow_mixed:
        raise PoolingError(
            "refusing to pool measurements made under different conditions: "
            + "; ".join(problems)
            + ". Rerun the configurations that differ (delete their results and run again), "
            "or set allow_mixed_provenance: true to pool them with a warning."
        )
    return [f"pooled despite different conditions: {p}" for p in problems]


def write_summary(
    result_paths: Iterable[str | os.PathLike[str]],
    out_csv: str | os.PathLike[str],
    out_md: str | os.PathLike[str],
    model_name: str,
    out_html: str | os.PathLike[str] | None = None,
    record_paths: Iterable[str | os.PathLike[str]] = (),
    allow_mixed: bool = False,
    cure_paths: Iterable[str | os.PathLike[str]] = (),
    out_cures_csv: str | os.PathLike[str] | None = None,
) -> None:
    """Write summary.csv (one row per configuration), summary.md and, when asked, the
    report's summary page and the cures' summary, all from the CSVs (after checking that
    the experiments' provenance records allow pooling them)."""
    warnings = provenance_warnings(record_paths, allow_mixed)
    df = load_results(result_paths)
    extra = []
    cure_paths = list(cure_paths)
    if cure_paths:
        cure_rows = load_cures(cure_paths)
        table = summarize_cures(cure_rows)
        if out_cures_csv is not None:
            write_cures_summary(cure_rows, out_cures_csv, summary=table)
        extra.append(cures_section(cure_rows, summary=table))
    with atomic_open(out_csv, "w") as fh:
        summarize(df).to_csv(fh, index=False, float_format="%.6g")
    doc = build(df, model_name, warnings, extra)
    with atomic_open(out_md, "w") as fh:
        fh.write(to_markdown(doc))
    if out_html is not None:
        pages.write_page(out_html, doc.title, to_html(doc))
