"""The cures figure: what each cure costs against how close it answers.

A cure is worth having when it is both fast (far left: a small share of the miss's TTFT)
and exact (top-1 agreement near 1, KL near 0). One column of panels per configuration
puts every cure between the two ends: the hit (fast, but it answers another prompt, so
it has no quality and is drawn as a vertical line at its share) and the miss (the exact
answer, at share 1 with perfect quality). The quality thresholds of the verdicts and
the noise floor of the comparison are drawn as horizontal lines, so that a reader sees
at a glance which side of them each cure lies.

Built on an explicit Agg canvas, like :mod:`kvcache_exp.report.plotting`, whose colours
for the hit and the miss and whose atomic save it reuses.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from kvcache_exp.analysis.cure_names import (
    HIT,
    MISS,
    SHIFT,
    config_label,
    cure_label,
    is_uncorrected,
    recompute_share,
)
from kvcache_exp.analysis.cures import EXACT_MAX_KL, EXACT_MIN_TOP1, configurations, summarize_cures
from kvcache_exp.analysis.load import load_cures
from kvcache_exp.report.plotting import COLORS, MARKERS, _save

#: KL is 0 for the miss (and often for the noise floor): a symlog axis shows 0 and spans
#: the decades above this linearly-drawn threshold (nats).
KL_LINTHRESH = 1e-3
SHIFT_COLOR = "tab:green"
#: shift + recompute r: darker for more recomputation.
RECOMPUTE_CMAP = "Purples"
FLOOR_STYLE = {"color": "0.35", "linestyle": "--", "linewidth": 1.0}
THRESHOLD_STYLE = {"color": "tab:red", "linestyle": ":", "linewidth": 1.0}


def _style(cure: str) -> dict:
    """Colour and marker of a cure's point."""
    share = recompute_share(cure)
    if cure == SHIFT:
        return {"color": SHIFT_COLOR, "marker": "s"}
    return {"color": colormaps[RECOMPUTE_CMAP](0.45 + 0.5 * min(share, 1.0)), "marker": "D"}


def _short(cure: str) -> str:
    """The point's text label: ``shift`` or ``+25%``."""
    share = recompute_share(cure)
    return SHIFT if share == 0 else f"+{share * 100:g}%"


def _xerr(row: pd.Series) -> list[list[float]] | None:
    """The share of the miss's CI as error bar lengths, None when it is not defined."""
    x, low, high = (
        float(row[c]) for c in ("share_of_miss", "share_of_miss_ci_low", "share_of_miss_ci_high")
    )
    if not all(math.isfinite(v) for v in (x, low, high)):
        return None
    return [[x - low], [high - x]]


def _draw_ends(top: Axes, bottom: Axes, rows: pd.DataFrame) -> None:
    """The hit as a vertical line (with its CI band) and the miss as the exact point at 1."""
    hit = rows[rows["cure"] == HIT]
    if len(hit) and math.isfinite(float(hit["share_of_miss"].iloc[0])):
        row = hit.iloc[0]
        for ax in (top, bottom):
            ax.axvline(
                row["share_of_miss"],
                color=COLORS[HIT],
                linestyle="--",
                label="hit: reuses A, answers another prompt (no quality)",
            )
            low, high = row["share_of_miss_ci_low"], row["share_of_miss_ci_high"]
            if math.isfinite(low) and math.isfinite(high):
                ax.axvspan(low, high, color=COLORS[HIT], alpha=0.12, lw=0)
    miss = rows[rows["cure"] == MISS]
    if len(miss):
        row = miss.iloc[0]
        for ax, column in ((top, "top1_agreement"), (bottom, "kl_mean")):
            ax.axvline(1.0, color=COLORS[MISS], linestyle=":", linewidth=1.0)
            ax.scatter(
                [1.0],
                [row[column]],
                s=70,
                color=COLORS[MISS],
                marker=MARKERS[MISS],
                zorder=3,
                clip_on=False,  # it sits on the axis limits (top-1 1, KL 0)
                label="miss: full recompute (the exact answer)",
            )


def _draw_cures(top: Axes, bottom: Axes, rows: pd.DataFrame, uncorrected: bool) -> None:
    """Each cure as a labelled point with its share's CI as a horizontal error bar."""
    for i, (_, row) in enumerate(rows[~rows["cure"].isin([HIT, MISS])].iterrows()):
        cure = str(row["cure"])
        style = _style(cure)
        for ax, column in ((top, "top1_agreement"), (bottom, "kl_mean")):
            y = float(row[column])
            if not (math.isfinite(y) and math.isfinite(float(row["share_of_miss"]))):
                continue
            ax.errorbar(
                row["share_of_miss"],
                y,
                xerr=_xerr(row),
                fmt=style["marker"],
                color=style["color"],
                markeredgecolor="black",
                markersize=7,
                capsize=3,
                zorder=4,
                label=cure_label(cure, uncorrected),
            )
            ax.annotate(
                _short(cure),
                (row["share_of_miss"], y),
                xytext=(6, 6 if i % 2 == 0 else -10),
                textcoords="offset points",
                fontsize="x-small",
            )


def _draw_references(top: Axes, bottom: Axes, rows: pd.DataFrame) -> None:
    """The verdicts' thresholds and the noise floor of the quality comparison."""
    top.axhline(EXACT_MIN_TOP1, **THRESHOLD_STYLE, label="verdict thresholds")
    bottom.axhline(EXACT_MAX_KL, **THRESHOLD_STYLE, label="verdict thresholds")
    floor = rows.iloc[0]
    for ax, column in ((top, "floor_top1_agreement"), (bottom, "floor_kl_mean")):
        value = float(floor[column])
        if math.isfinite(value):
            ax.axhline(value, **FLOOR_STYLE, label="noise floor (two full recomputes)")


def _draw_column(top: Axes, bottom: Axes, rows: pd.DataFrame) -> None:
    """Both panels of one configuration."""
    uncorrected = any(is_uncorrected(p) for p in rows["position_correction"])
    _draw_references(top, bottom, rows)
    _draw_ends(top, bottom, rows)
    _draw_cures(top, bottom, rows, uncorrected)
    first = rows.iloc[0]
    title = config_label(first["keep_tokens"], first["size_a"], first["size_b"])
    note = "uncorrected shift: absolute positions" if uncorrected else "RoPE re-rotated"
    top.set_title(f"A/B = {title}\n({note})", fontsize="medium")
    shares = rows[["share_of_miss", "share_of_miss_ci_high"]].to_numpy(dtype=float)
    right = max(1.1, float(np.nanmax(shares)) * 1.05) if np.isfinite(shares).any() else 1.1
    top1 = rows["top1_agreement"].to_numpy(dtype=float)
    lowest = float(np.nanmin(top1)) if np.isfinite(top1).any() else EXACT_MIN_TOP1
    top.set_ylim(max(-0.02, min(lowest, EXACT_MIN_TOP1) - 0.05), 1.02)
    kl = rows[["kl_mean", "floor_kl_mean"]].to_numpy(dtype=float)
    highest = float(np.nanmax(kl)) if np.isfinite(kl).any() else EXACT_MAX_KL
    bottom.set_yscale("symlog", linthresh=KL_LINTHRESH)
    bottom.set_ylim(0, max(highest, EXACT_MAX_KL) * 3)
    for ax in (top, bottom):
        ax.set_xlim(0, right)
        ax.grid(alpha=0.3)
    top.set_ylabel("Top-1 agreement with the exact answer")
    bottom.set_ylabel("Mean KL(exact ‖ cure) (nats, symlog)")
    bottom.set_xlabel("Median TTFT / median miss TTFT (95% CI)")


def _legend(fig: Figure, axes: np.ndarray) -> None:
    """One legend for every panel, each entry once, right of the last column."""
    entries: dict[str, object] = {}
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    axes[0, -1].legend(
        list(entries.values()),
        list(entries),
        fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
    )


def _trials_note(summary: pd.DataFrame) -> str:
    """How many verified trials each point holds, for the title."""
    counts = summary["n"].astype(int)
    low, high = int(counts.min()), int(counts.max())
    per = f"{low}" if low == high else f"{low}-{high}"
    return f"{per} verified trial{'' if high == 1 else 's'} per cure and configuration"


def plot_cures(
    df: pd.DataFrame,
    out_png: str | os.PathLike[str],
    model_name: str,
    *,
    summary: pd.DataFrame | None = None,
) -> None:
    """The cures figure from the cures rows ``df``: one column per configuration, top-1
    agreement (top) and mean KL (bottom) against the share of the miss's TTFT.

    Pass ``summary`` (:func:`summarize_cures` of ``df``) to skip the bootstrap. When no
    cure was measured, the figure says so (the workflow still expects the file).
    """
    if summary is None:
        summary = summarize_cures(df)
    configs = configurations(summary)
    if not configs:
        fig = Figure(figsize=(6.0, 2.0), layout="constrained")
        fig.text(0.5, 0.5, f"Cures for a miss: not measured ({model_name})", ha="center")
        _save(fig, out_png)
        return
    fig = Figure(figsize=(4.6 * len(configs) + 3.8, 8.0), layout="constrained")
    axes = fig.subplots(2, len(configs), squeeze=False, sharex="col")
    for j, (keep, size_a, size_b) in enumerate(configs):
        here = (
            (summary["keep_tokens"] == keep)
            & (summary["size_a"] == size_a)
            & (summary["size_b"] == size_b)
        )
        _draw_column(axes[0, j], axes[1, j], summary[here])
    _legend(fig, axes)
    fig.suptitle(
        f"Cures for a miss: cost against quality, {model_name}\n"
        f"{_trials_note(summary)}; the hit and the miss are the two ends"
    )
    _save(fig, out_png)


def plot_cures_csvs(
    cure_paths: list[str | os.PathLike[str]], out_png: str | os.PathLike[str], model_name: str
) -> None:
    """The cures figure from the cures CSVs: what the plot_cures rule and ``kvcache-plot``
    both make."""
    plot_cures(load_cures(cure_paths), out_png, model_name)
