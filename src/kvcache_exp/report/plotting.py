"""The experiment's figures, drawn from the concatenated results DataFrame.

The seed's plot showed medians only; here every trial is visible, so that a reader can
see the spread and outliers behind each median, and the median's 95% bootstrap interval
is drawn, so that "constant" and "linear" can be judged by eye against the noise.

Figures are built on an explicit Agg canvas rather than through pyplot: no global state,
no display needed, and the same output from Snakemake jobs and tests.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kvcache_exp.analysis import stats, trials
from kvcache_exp.analysis.load import load_results, verified_flags
from kvcache_exp.columns import CONDITIONS
from kvcache_exp.outputs import atomic_open

COLORS = {"hit": "tab:blue", "miss": "tab:orange"}
MARKERS = {"hit": "o", "miss": "^"}
#: Horizontal half-width of the jitter that keeps equal values from hiding each other.
JITTER = 0.05
#: Half-width of the median bar and where the CI is drawn, right of the trial points.
MEDIAN_HALF_WIDTH = 0.08
CI_OFFSET = 0.1
#: Median values are printed next to TTFT medians up to this many configurations.
ANNOTATE_MAX_CONFIGS = 6
#: Fixed so that reruns on the same CSVs give the same picture.
JITTER_SEED = 0
#: Throughput series: (column, label, marker) for the second panel of the main figure.
THROUGHPUT_SERIES = (
    ("throughput_tok_s", "generation", "o"),
    ("decode_tok_s", "decode only", "s"),
)


def configurations(df: pd.DataFrame) -> list[tuple[int, int]]:
    """(size_a, size_b) pairs in the order they first appear in the results."""
    pairs = df[["size_a", "size_b"]].drop_duplicates()
    return [(int(a), int(b)) for a, b in pairs.itertuples(index=False)]


def _values(df: pd.DataFrame, config: tuple[int, int], condition: str, column: str) -> np.ndarray:
    """Finite values of ``column`` for one configuration and condition."""
    a, b = config
    rows = df[(df["size_a"] == a) & (df["size_b"] == b) & (df["condition"] == condition)]
    return stats.clean(pd.to_numeric(rows[column], errors="coerce"))


def _label_once(label: str, seen: set[str]) -> str | None:
    """The label the first time it is used, None after, so the legend lists it once."""
    if label in seen:
        return None
    seen.add(label)
    return label


#: How the trials that enter no statistic (unverified, or set aside as slow outliers) are
#: drawn: hollow, so that a reader sees them and sees that the median leaves them out.
LEFT_OUT_STYLE = {"facecolors": "none", "edgecolors": "0.45", "s": 22, "linewidths": 0.8}


def _trials_with_median(
    ax: Axes,
    x: float,
    values: np.ndarray,
    style: dict,
    seen: set[str],
    left_out: np.ndarray | None = None,
) -> None:
    """Every trial as a jittered point, the median as a bar, and its 95% CI beside them.

    ``values`` are the trials the summary uses; ``left_out`` the others, drawn hollow.
    """
    if left_out is not None and left_out.size:
        rng = np.random.default_rng(JITTER_SEED + 1)
        ax.scatter(
            x + rng.uniform(-JITTER, JITTER, left_out.size),
            left_out,
            marker=style["marker"],
            label=_label_once("left out: unverified or slow outlier", seen),
            **LEFT_OUT_STYLE,
        )
    if values.size == 0:
        return
    rng = np.random.default_rng(JITTER_SEED)
    xs = x + rng.uniform(-JITTER, JITTER, values.size)
    ax.scatter(
        xs,
        values,
        s=16,
        alpha=0.55,
        color=style["color"],
        marker=style["marker"],
        label=_label_once(style["label"], seen),
    )
    ci = stats.median_ci(values)
    ax.hlines(ci.estimate, x - MEDIAN_HALF_WIDTH, x + MEDIAN_HALF_WIDTH, colors="black", lw=2)
    if np.isfinite(ci.low) and np.isfinite(ci.high):
        yerr = [[ci.estimate - ci.low], [ci.high - ci.estimate]]
        ax.errorbar(x + CI_OFFSET, ci.estimate, yerr=yerr, fmt="none", ecolor="black", capsize=3)
    if style.get("annotate"):
        ax.annotate(
            f"{ci.estimate:.1f}",
            (x + CI_OFFSET, ci.estimate),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize="x-small",
        )


def _config_axis(ax: Axes, configs: list[tuple[int, int]]) -> None:
    """Configuration ticks labelled A/B."""
    ax.set_xticks(range(len(configs)))
    ax.set_xticklabels([f"{a}/{b}" for a, b in configs], rotation=45 if len(configs) > 6 else 0)
    ax.set_xlim(-0.6, len(configs) - 0.4)
    ax.set_xlabel("Configuration (A/B tokens)")
    ax.grid(axis="y", alpha=0.3)


def _legend_keys(ax: Axes) -> None:
    """Legend entries for the median bar and CI line, which are drawn without labels."""
    ax.plot([], [], color="black", linewidth=2, label="median")
    ax.errorbar([], [], yerr=[], fmt="none", ecolor="black", capsize=3, label="95% CI of median")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # never on data


def _left_out(df: pd.DataFrame, kept: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``df`` that ``kept`` does not hold."""
    return df[~df.index.isin(kept.index)]


def _draw_ttft(
    ax: Axes, df: pd.DataFrame, configs: list[tuple[int, int]], kept: pd.DataFrame
) -> None:
    """Hit and miss TTFT per configuration: the summary's trials (``kept``) and its
    medians, the others hollow."""
    left = _left_out(df, kept)
    seen: set[str] = set()
    annotate = len(configs) <= ANNOTATE_MAX_CONFIGS
    for i, config in enumerate(configs):
        for offset, cond in zip((-0.2, 0.2), CONDITIONS, strict=True):
            style = {
                "color": COLORS[cond],
                "marker": MARKERS[cond],
                "label": f"{cond} trials",
                "annotate": annotate,
            }
            _trials_with_median(
                ax,
                i + offset,
                _values(kept, config, cond, "ttft_ms"),
                style,
                seen,
                left_out=_values(left, config, cond, "ttft_ms"),
            )
    _config_axis(ax, configs)
    ax.set_ylabel("TTFT (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title("Time to first token: every trial, median and 95% CI")
    _legend_keys(ax)


def _draw_throughput(ax: Axes, df: pd.DataFrame, configs: list[tuple[int, int]]) -> None:
    """Generation and decode-only throughput per configuration and condition, over the
    verified trials (an unverified trial did not run the designed calls)."""
    df = df[verified_flags(df["cache_verified"]).ne(False)] if "cache_verified" in df else df
    seen: set[str] = set()
    offsets = iter(np.linspace(-0.3, 0.3, len(THROUGHPUT_SERIES) * len(CONDITIONS)))
    for column, name, marker in THROUGHPUT_SERIES:
        for cond in CONDITIONS:
            offset = next(offsets)
            style = {"color": COLORS[cond], "marker": marker, "label": f"{cond}, {name}"}
            for i, config in enumerate(configs):
                values = _values(df, config, cond, column)
                _trials_with_median(ax, i + offset, values, style, seen)
    _config_axis(ax, configs)
    ax.set_ylabel("Throughput (tokens/s)")
    ax.set_ylim(bottom=0)
    ax.set_title("Generation throughput (all tokens) and decode-only throughput")
    _legend_keys(ax)


def _trials_note(df: pd.DataFrame) -> str:
    """How many trials each point cloud holds, for the figure title."""
    counts = df.groupby(["size_a", "size_b", "condition"]).size()
    if counts.empty:
        return "no trials"
    low, high = int(counts.min()), int(counts.max())
    per = f"{low}" if low == high else f"{low}-{high}"
    return f"{per} trial{'' if high == 1 else 's'} per condition and configuration"


def _save(fig: Figure, out_png: str | os.PathLike[str]) -> None:
    """Render to PNG under a temporary name and rename it into place."""
    FigureCanvasAgg(fig)
    with atomic_open(out_png, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)


def _kept(df: pd.DataFrame) -> pd.DataFrame:
    """The trials the summary's TTFT statistics use (:mod:`kvcache_exp.analysis.trials`)."""
    return trials.kept_rows(df, trials.by_configuration(df))


def plot_all_configs(df: pd.DataFrame, out_png: str | os.PathLike[str], model_name: str) -> None:
    """The main figure: TTFT per configuration (top) and throughput (bottom)."""
    configs = configurations(df)
    width = max(10.0, 1.3 * len(configs) + 6.0)
    fig = Figure(figsize=(width, 9.5), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    _draw_ttft(top, df, configs, _kept(df))
    _draw_throughput(bottom, df, configs)
    fig.suptitle(f"KV-cache prefix invalidation: {model_name}\n{_trials_note(df)}")
    _save(fig, out_png)


def plot_throughput(df: pd.DataFrame, out_png: str | os.PathLike[str], model_name: str) -> None:
    """Throughput alone (the main figure's lower panel), for the report's Throughput page."""
    configs = configurations(df)
    fig = Figure(figsize=(max(8.0, 1.3 * len(configs) + 5.0), 5.0), layout="constrained")
    _draw_throughput(fig.subplots(), df, configs)
    fig.suptitle(f"Throughput: {model_name}\n{_trials_note(df)}")
    _save(fig, out_png)


def _fit_label(fit: stats.LineFit) -> str:
    """The legend text of the miss line: equation and R²."""
    r2 = f"{fit.r_squared:.3f}" if np.isfinite(fit.r_squared) else "n/a"
    sign = "+" if fit.intercept >= 0 else "-"
    return f"miss fit: y = {fit.slope:.3g}·x {sign} {abs(fit.intercept):.3g} ms, R² = {r2}"


def _draw_fit(ax: Axes, df: pd.DataFrame) -> None:
    """The least-squares line of miss TTFT over the summary's trials, across the whole
    range of tokens shown."""
    fit = stats.fit_miss_ttft_vs_recomputed(df)
    if not np.isfinite(fit.slope):
        ax.plot([], [], " ", label="no miss fit: needs 2+ distinct token counts")
        return
    xs = stats.clean(pd.to_numeric(df["tokens_recomputed"], errors="coerce"))
    line_x = np.array([xs.min(), xs.max()])
    ax.plot(line_x, fit.slope * line_x + fit.intercept, color=COLORS["miss"], label=_fit_label(fit))


def plot_ttft_vs_tokens(df: pd.DataFrame, out_png: str | os.PathLike[str], model_name: str) -> None:
    """Every trial's TTFT against the tokens its TTFT call recomputed, with the miss line."""
    fig = Figure(figsize=(8.0, 5.5), layout="constrained")
    ax = fig.subplots()
    kept = _kept(df)
    left = _left_out(df, kept)
    if len(left):
        x = pd.to_numeric(left["tokens_recomputed"], errors="coerce")
        y = pd.to_numeric(left["ttft_ms"], errors="coerce")
        ax.scatter(x, y, label="left out: unverified or slow outlier", **LEFT_OUT_STYLE)
    for cond in CONDITIONS:
        rows = kept[kept["condition"] == cond]
        x = pd.to_numeric(rows["tokens_recomputed"], errors="coerce")
        y = pd.to_numeric(rows["ttft_ms"], errors="coerce")
        ax.scatter(x, y, s=18, alpha=0.6, color=COLORS[cond], marker=MARKERS[cond], label=cond)
    _draw_fit(ax, kept)
    ax.set_xlabel("Tokens recomputed in the TTFT call (tokens)")
    ax.set_ylabel("TTFT (ms)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    ax.set_title(f"TTFT vs tokens recomputed: {model_name}")
    _save(fig, out_png)


def plot_results(
    result_paths: list[str | os.PathLike[str]],
    main_png: str | os.PathLike[str],
    tokens_png: str | os.PathLike[str],
    throughput_png: str | os.PathLike[str],
    model_name: str,
) -> None:
    """The three figures of the results CSVs: what the plot rule and ``kvcache-plot``
    both make."""
    df = load_results(result_paths)
    plot_all_configs(df, main_png, model_name)
    plot_ttft_vs_tokens(df, tokens_png, model_name)
    plot_throughput(df, throughput_png, model_name)
