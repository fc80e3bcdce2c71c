"""The conversation replay's figures, one column per cache behaviour:

* TTFT per turn per policy: every conversation as a thin line, the median per turn as
  a thick one, the turns in which the policy removed something marked; dropping one
  turn per message shows as a saw-tooth that never comes down, dropping a chunk as rare
  teeth;
* tokens evaluated, cumulated over the turns (the median over conversations): what
  each policy costs the engine over a whole conversation;
* quality against successive shifts: the shifted cache's top-1 agreement and mean KL
  against a full recompute, by how many shifts its cells have been through.

Only verified turns are drawn. Built on an explicit Agg canvas and saved atomically,
like :mod:`kvcache_exp.report.plotting`, whose save it reuses.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from kvcache_exp.analysis.conversations import quality_by_shifts
from kvcache_exp.report.plotting import _save

#: Colours of the policies, in the order they first appear.
PALETTE = "tab10"


def _colors(policies: list[str]) -> dict[str, tuple]:
    cmap = colormaps[PALETTE]
    return {p: cmap(i % 10) for i, p in enumerate(policies)}


def _empty(out_png: str | os.PathLike[str], title: str) -> None:
    fig = Figure(figsize=(6.0, 2.0), layout="constrained")
    fig.text(0.5, 0.5, title, ha="center", va="center")
    _save(fig, out_png)


def _columns(turns: pd.DataFrame) -> tuple[list[str], list[str], dict[str, tuple]]:
    caches = list(dict.fromkeys(turns["cache"]))
    policies = list(dict.fromkeys(turns["policy"]))
    return caches, policies, _colors(policies)


def plot_ttft(turns: pd.DataFrame, out_png: str | os.PathLike[str], model_name: str) -> None:
    """TTFT per turn, per policy, one panel per cache behaviour (log scale)."""
    good = turns[turns["verified"]]
    if good.empty:
        _empty(out_png, f"Conversations: no verified turn ({model_name})")
        return
    caches, policies, colors = _columns(good)
    fig = Figure(figsize=(5.2 * len(caches) + 2.6, 4.6), layout="constrained")
    axes = fig.subplots(1, len(caches), squeeze=False, sharey=True)[0]
    for ax, cache in zip(axes, caches, strict=True):
        here = good[good["cache"] == cache]
        for policy in policies:
            rows = here[here["policy"] == policy]
            if rows.empty:
                continue
            color = colors[policy]
            for _, conv in rows.groupby("conversation"):
                ax.plot(conv["turn"], conv["ttft_ms"], color=color, alpha=0.25, lw=0.8)
            median = rows.groupby("turn")["ttft_ms"].median()
            ax.plot(
                median.index, median.values, color=color, lw=2.2, marker="o", ms=4, label=policy
            )
            removed = rows[rows["removed"]]
            ax.scatter(
                removed["turn"],
                removed["ttft_ms"],
                marker="x",
                color=color,
                s=28,
                zorder=3,
                label=None,
            )
        ax.set_yscale("log")
        ax.set_title(f"cache: {cache}")
        ax.set_xlabel("Turn")
        ax.grid(alpha=0.3, which="both")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("TTFT (ms, log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    axes[-1].legend(
        handles,
        labels,
        title="policy (x: it removed turns)",
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize="small",
    )
    fig.suptitle(
        f"Time to first token per turn: {model_name}\n"
        "thin: each conversation; thick: the median per turn"
    )
    _save(fig, out_png)


def plot_tokens(turns: pd.DataFrame, out_png: str | os.PathLike[str], model_name: str) -> None:
    """Tokens evaluated, cumulated over the turns (median over conversations)."""
    good = turns[turns["verified"]]
    if good.empty:
        _empty(out_png, f"Conversations: no verified turn ({model_name})")
        return
    caches, policies, colors = _columns(good)
    fig = Figure(figsize=(5.2 * len(caches) + 2.6, 4.2), layout="constrained")
    axes = fig.subplots(1, len(caches), squeeze=False, sharey=True)[0]
    for ax, cache in zip(axes, caches, strict=True):
        here = good[good["cache"] == cache]
        for policy in policies:
            rows = here[here["policy"] == policy].sort_values(["conversation", "turn"])
            if rows.empty:
                continue
            cumulative = rows.assign(
                total=rows.groupby("conversation")["evaluated_tokens"].cumsum()
            )
            median = cumulative.groupby("turn")["total"].median()
            ax.plot(
                median.index,
                median.values,
                color=colors[policy],
                lw=2,
                marker="o",
                ms=4,
                label=policy,
            )
            prompts = rows.assign(total=rows.groupby("conversation")["prompt_tokens"].cumsum())
            whole = prompts.groupby("turn")["total"].median()
            ax.plot(whole.index, whole.values, color=colors[policy], lw=1, ls=":", alpha=0.7)
        ax.set_title(f"cache: {cache}")
        ax.set_xlabel("Turn")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("Tokens evaluated so far (median)")
    axes[-1].legend(
        title="policy (dotted: prompt tokens sent)",
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize="small",
    )
    fig.suptitle(f"Tokens the engine evaluated, cumulated: {model_name}")
    _save(fig, out_png)


def plot_quality(turns: pd.DataFrame, out_png: str | os.PathLike[str], model_name: str) -> None:
    """Top-1 agreement and mean KL of a shifted cache against successive shifts."""
    table = quality_by_shifts(turns)
    if table.empty:
        _empty(out_png, f"Conversations: no shifted cache, no quality to show ({model_name})")
        return
    policies = list(dict.fromkeys(table["policy"]))
    colors = _colors(list(dict.fromkeys(turns["policy"])))
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    offsets = np.linspace(-0.12, 0.12, len(policies)) if len(policies) > 1 else [0.0]
    for offset, policy in zip(offsets, policies, strict=True):
        rows = table[table["policy"] == policy]
        x = rows["shifts"].to_numpy(dtype=float) + offset
        for ax, column in ((top, "top1_agreement"), (bottom, "kl_mean")):
            y = rows[column].to_numpy(dtype=float)
            low = rows[f"{column}_ci_low"].to_numpy(dtype=float)
            high = rows[f"{column}_ci_high"].to_numpy(dtype=float)
            yerr = np.vstack(
                [np.where(np.isfinite(low), y - low, 0), np.where(np.isfinite(high), high - y, 0)]
            )
            ax.errorbar(
                x,
                y,
                yerr=yerr,
                color=colors[policy],
                marker="o",
                capsize=3,
                lw=1.5,
                label=f"{policy} ({', '.join(dict.fromkeys(rows['cache']))})",
            )
    top.set_ylabel("Top-1 agreement with a full recompute")
    lows = table[["top1_agreement", "top1_agreement_ci_low"]].to_numpy(dtype=float)
    lowest = float(np.nanmin(lows)) if np.isfinite(lows).any() else 0.9
    top.set_ylim(max(-0.02, min(0.9, lowest) - 0.03), 1.02)
    bottom.set_ylabel("Mean KL(full ‖ shifted) (nats, symlog)")
    bottom.set_yscale("symlog", linthresh=1e-3)
    bottom.set_xlabel("Shifts the cached cells have been through")
    highest = float(np.nanmax(table["kl_mean_ci_high"].fillna(table["kl_mean"])))
    bottom.set_ylim(0, max(highest * 2, 1e-2) if math.isfinite(highest) else 1.0)
    shifts = sorted(int(v) for v in table["shifts"].unique())
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.set_xticks(shifts)
        ax.set_xlim(shifts[0] - 0.5, shifts[-1] + 0.5)
    top.legend(fontsize="small", loc="lower left")
    fig.suptitle(
        f"Quality after successive shifts: {model_name}\n"
        "median over turns, 95% interval over conversations"
    )
    _save(fig, out_png)
