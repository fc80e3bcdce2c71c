"""The cures figure: how close each cure answers against the kept prefix, and what it
costs.

A cure is worth having when it is both fast (a small share of the miss's TTFT) and exact
(top-1 agreement near 1, KL near 0). One column of panels per configuration (A/B): the
top panels draw the top-1 agreement and the mean KL of every cure against the kept prefix
size S, with the 95% interval over the prompts, beside the verdicts' thresholds and the
noise floor (the miss); the bottom panel draws each cure's median TTFT as a share of the
miss's at each S, with the hit's share as the fast end. So a reader sees at a glance how
much of the shift's loss is the missing first cell (S = 0 against S > 0), and whether
recomputing the head of B buys more than recomputing its tail at the same cost.

Built on an explicit Agg canvas, like :mod:`kvcache_exp.report.plotting`, whose colours
for the hit and the miss and whose atomic save it reuses.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from kvcache_exp.analysis.cure_names import (
    CACHED_VS_FULL,
    HEAD,
    HIT,
    MISS,
    SERVER_CACHE_REUSE,
    SHIFT,
    cure_label,
    cure_rank,
    is_uncorrected,
    recompute_share,
    recompute_where,
)
from kvcache_exp.analysis.cures import EXACT_MAX_KL, EXACT_MIN_TOP1, summarize_cures
from kvcache_exp.analysis.load import load_cures
from kvcache_exp.report.plotting import COLORS, _save

#: KL is 0 for the miss (and often for the floor): a symlog axis shows 0 and spans the
#: decades above this linearly-drawn threshold (nats).
KL_LINTHRESH = 1e-3
SHIFT_COLOR = "tab:green"
#: shift + recompute r: the tail in purples, the head in oranges, darker for more r.
RECOMPUTE_CMAPS = {"tail": "Purples", "head": "Oranges"}
FLOOR_STYLE = {"color": "0.35", "linestyle": "--", "linewidth": 1.0}
THRESHOLD_STYLE = {"color": "tab:red", "linestyle": ":", "linewidth": 1.0}


def _style(cure: str) -> dict:
    """Colour, marker and line of a cure's series."""
    if cure in (SHIFT, SERVER_CACHE_REUSE):
        return {"color": SHIFT_COLOR, "marker": "s", "linestyle": "-"}
    where, share = recompute_where(cure), recompute_share(cure)
    shade = colormaps[RECOMPUTE_CMAPS.get(where, "Greys")](0.45 + 0.5 * min(share, 1.0))
    return {
        "color": shade,
        "marker": "o" if where == HEAD else "D",
        "linestyle": "-" if where == HEAD else "--",
    }


def _yerr(rows: pd.DataFrame, name: str, scale: float = 1.0) -> np.ndarray:
    """Error bar lengths of ``name`` from its interval columns (0 where undefined)."""
    value = rows[name].to_numpy(dtype=float) * scale
    low = rows[f"{name}_ci_low"].to_numpy(dtype=float) * scale
    high = rows[f"{name}_ci_high"].to_numpy(dtype=float) * scale
    err = np.vstack([value - low, high - value])
    return np.where(np.isfinite(err), np.maximum(err, 0), 0)


def _series(ax: Axes, x: np.ndarray, rows: pd.DataFrame, column: str, label: str, style: dict):
    """One cure's points along S with their intervals, joined by a line."""
    y = rows[column].to_numpy(dtype=float)
    if not np.isfinite(y).any():
        return
    ax.errorbar(
        x,
        y,
        yerr=_yerr(rows, column),
        label=label,
        capsize=3,
        markersize=6,
        markeredgecolor="black",
        **style,
    )


def _draw_column(axes: np.ndarray, rows: pd.DataFrame, jitter: dict[str, float]) -> None:
    """The three panels of one configuration (A/B), every kept prefix size along x."""
    top, middle, bottom = axes
    keeps = sorted(set(rows["keep_tokens"].astype(int)))
    at = {k: i for i, k in enumerate(keeps)}
    uncorrected = any(is_uncorrected(p) for p in rows["position_correction"])
    floor = rows[rows["cure"] == MISS].sort_values("keep_tokens")
    fx = np.array([at[int(k)] for k in floor["keep_tokens"]])
    top.plot(fx, floor["top1_agreement"], label="noise floor (the miss)", **FLOOR_STYLE)
    middle.plot(fx, floor["kl_mean"], label="noise floor (the miss)", **FLOOR_STYLE)
    top.axhline(EXACT_MIN_TOP1, label="verdict thresholds", **THRESHOLD_STYLE)
    middle.axhline(EXACT_MAX_KL, label="verdict thresholds", **THRESHOLD_STYLE)
    hit = rows[rows["cure"] == HIT].sort_values("keep_tokens")
    if len(hit):
        hx = np.array([at[int(k)] for k in hit["keep_tokens"]])
        bottom.plot(hx, hit["share_of_miss"], color=COLORS[HIT], linestyle="--", label="hit")
    names = [c for c in dict.fromkeys(rows["cure"].astype(str)) if c not in (HIT, MISS)]
    for cure in sorted((c for c in names if c != CACHED_VS_FULL), key=cure_rank):
        mine = rows[rows["cure"] == cure].sort_values("keep_tokens")
        x = np.array([at[int(k)] for k in mine["keep_tokens"]], dtype=float) + jitter[cure]
        label, style = cure_label(cure, uncorrected), _style(cure)
        _series(top, x, mine, "top1_agreement", label, style)
        _series(middle, x, mine, "kl_mean", label, style)
        _series(bottom, x, mine, "share_of_miss", label, style)
    first = rows.iloc[0]
    note = "uncorrected shift: absolute positions" if uncorrected else "RoPE re-rotated"
    top.set_title(f"A/B = {int(first['size_a'])}/{int(first['size_b'])}\n({note})")
    top1 = rows["top1_agreement_ci_low"].to_numpy(dtype=float)
    lowest = float(np.nanmin(top1)) if np.isfinite(top1).any() else EXACT_MIN_TOP1
    top.set_ylim(max(-0.02, min(lowest, EXACT_MIN_TOP1) - 0.05), 1.02)
    kl = rows[["kl_mean_ci_high", "floor_kl_mean"]].to_numpy(dtype=float)
    highest = float(np.nanmax(kl)) if np.isfinite(kl).any() else EXACT_MAX_KL
    middle.set_yscale("symlog", linthresh=KL_LINTHRESH)
    middle.set_ylim(0, max(highest, EXACT_MAX_KL) * 3)
    bottom.set_ylim(bottom=0)
    for ax in axes:
        ax.set_xticks(range(len(keeps)))
        ax.set_xticklabels([str(k) for k in keeps])
        ax.set_xlim(-0.5, len(keeps) - 0.5)
        ax.grid(alpha=0.3)
    top.set_ylabel("Top-1 agreement with the exact answer")
    middle.set_ylabel("Mean KL(exact ‖ cure) (nats, symlog)")
    bottom.set_ylabel("Median TTFT / median miss TTFT")
    bottom.set_xlabel("Kept prefix S (tokens)")


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


def _note(summary: pd.DataFrame) -> str:
    """How many prompts each point holds, for the title."""
    counts = summary["n"].astype(int)
    low, high = int(counts.min()), int(counts.max())
    per = f"{low}" if low == high else f"{low}-{high}"
    return f"{per} prompt{'' if high == 1 else 's'} per cure, configuration and kept prefix"


def plot_cures(
    df: pd.DataFrame,
    out_png: str | os.PathLike[str],
    model_name: str,
    *,
    summary: pd.DataFrame | None = None,
) -> None:
    """The cures figure from the cures rows ``df``: one column per configuration (A/B),
    top-1 agreement, mean KL and the share of the miss's TTFT against the kept prefix.

    Pass ``summary`` (:func:`summarize_cures` of ``df``) to skip the bootstrap. When no
    cure was measured, the figure says so (the workflow still expects the file).
    """
    if summary is None:
        summary = summarize_cures(df)
    pairs = list(dict.fromkeys(zip(summary["size_a"], summary["size_b"], strict=True)))
    if not pairs:
        fig = Figure(figsize=(6.0, 2.0), layout="constrained")
        fig.text(0.5, 0.5, f"Cures for a miss: not measured ({model_name})", ha="center")
        _save(fig, out_png)
        return
    names = sorted(set(summary["cure"].astype(str)), key=cure_rank)
    spread = [c for c in names if c not in (HIT, MISS, CACHED_VS_FULL)]
    jitter = {c: 0.25 * (i / max(len(spread) - 1, 1) - 0.5) for i, c in enumerate(spread)}
    fig = Figure(figsize=(5.0 * len(pairs) + 4.2, 11.0), layout="constrained")
    axes = fig.subplots(3, len(pairs), squeeze=False, sharex="col")
    for j, (size_a, size_b) in enumerate(pairs):
        here = (summary["size_a"] == size_a) & (summary["size_b"] == size_b)
        _draw_column(axes[:, j], summary[here], jitter)
    _legend(fig, axes)
    fig.suptitle(
        f"Cures for a miss: quality and cost against the kept prefix S, {model_name}\n"
        f"{_note(summary)}; 95% intervals over the prompts (quality) and trials (time)"
    )
    _save(fig, out_png)


def plot_cures_csvs(
    cure_paths: list[str | os.PathLike[str]], out_png: str | os.PathLike[str], model_name: str
) -> None:
    """The cures figure from the cures CSVs: what the plot_cures rule and ``kvcache-plot``
    both make."""
    plot_cures(load_cures(cure_paths), out_png, model_name)
