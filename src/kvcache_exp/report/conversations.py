"""The conversation replay's summary (CSV, Markdown and the report's page) and figures,
from the replay CSVs, through one function each for the workflow's rules and the
command line.

Numbers come from :mod:`kvcache_exp.analysis.conversations`; they are arranged into one
:class:`~kvcache_exp.report.document.Document`, rendered to Markdown and HTML like the
experiment's summary, so that the two never disagree.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import pandas as pd

from kvcache_exp.analysis import stats
from kvcache_exp.analysis.conversations import (
    TAIL,
    load_turns,
    quality_by_shifts,
    summarize_turns,
)
from kvcache_exp.analysis.formatting import num, pct, pct_ci, with_ci
from kvcache_exp.chat.tripwire import TEMPLATE, TOKENIZATION, TRUNCATION
from kvcache_exp.outputs import atomic_open
from kvcache_exp.report import conversations_plot, pages
from kvcache_exp.report.document import Document, Section, Table, to_html, to_markdown

Paths = Iterable[str | os.PathLike[str]]


def _reused(r: pd.Series) -> str:
    interval = pct_ci(r["reused_share_ci_low"], r["reused_share_ci_high"], ".0f")
    return f"{pct(r['reused_share'], '.0f')} {interval}"


def _per_policy(summary: pd.DataFrame) -> Section:
    rows = [
        [
            f"`{r['policy']}`",
            f"`{r['cache']}`",
            f"{int(r['conversations'])} / {int(r['turns'])}",
            with_ci(
                r["ttft_median_ms"], r["ttft_median_ci_low_ms"], r["ttft_median_ci_high_ms"], ".0f"
            ),
            with_ci(
                r[f"ttft_p{TAIL}_ms"],
                r[f"ttft_p{TAIL}_ci_low_ms"],
                r[f"ttft_p{TAIL}_ci_high_ms"],
                ".0f",
            ),
            f"{pct(r['removed_share'], '.0f')} ({num(r['ttft_removed_median_ms'], '.0f', ' ms')})",
            with_ci(
                r["evaluated_per_conversation"],
                r["evaluated_per_conversation_ci_low"],
                r["evaluated_per_conversation_ci_high"],
                ".0f",
            ),
            _reused(r),
            " / ".join(str(int(r[f"tripwire_{c}"])) for c in (TRUNCATION, TEMPLATE, TOKENIZATION)),
            num(r["decode_tok_s"], ".1f"),
        ]
        for _, r in summary.iterrows()
    ]
    header = [
        "Policy",
        "Cache",
        "Conversations / turns",
        "TTFT median ms [95% CI]",
        f"TTFT p{TAIL} ms [95% CI]",
        "Turns truncated (their median TTFT)",
        "Tokens evaluated per conversation [95% CI]",
        "Prompt reused [95% CI]",
        "Tripwires: truncation / template / tokenization",
        "Decode tok/s",
    ]
    intro = (
        f"Every verified turn of every conversation; intervals ({stats.CONFIDENCE:.0%}, "
        f"percentile bootstrap, {stats.RESAMPLES:,} resamples) resample whole conversations, "
        "since a conversation's turns share their cache. A turn's TTFT is the seed's "
        "one-token call: what the engine does not reuse is evaluated, and one token sampled. "
        "No turn is set aside as a slow outlier: a slow turn after a drop is the measurement."
    )
    return Section("Per policy and cache behaviour", [intro, Table(header, rows)], priority=0)


def _quality(table: pd.DataFrame) -> Section:
    if table.empty:
        return Section(
            "Quality after successive shifts",
            ["No turn evaluated its prompt from shifted cells (no `shift` behaviour, or no drop)."],
        )
    rows = [
        [
            f"`{r['policy']}`",
            f"`{r['cache']}`",
            str(int(r["shifts"])),
            f"{int(r['conversations'])} / {int(r['turns'])}",
            with_ci(
                r["top1_agreement"], r["top1_agreement_ci_low"], r["top1_agreement_ci_high"], ".3f"
            ),
            with_ci(r["kl_mean"], r["kl_mean_ci_low"], r["kl_mean_ci_high"], ".3g"),
            num(r["first_divergence"], ".0f"),
        ]
        for _, r in table.iterrows()
    ]
    header = [
        "Policy",
        "Cache",
        "Shifts of the cells",
        "Conversations / turns",
        "Top-1 agreement [95% CI]",
        "Mean KL nats [95% CI]",
        "First divergence",
    ]
    intro = (
        "After a turn evaluated from a shifted cache, its next-token distributions over the "
        "reply's first tokens (teacher-forced) against a full recompute of the same prompt: "
        "by how many shifts the cached cells have been through (untimed)."
    )
    return Section("Quality after successive shifts", [intro, Table(header, rows)], priority=1)


def _work(summary: pd.DataFrame) -> Section:
    rows = [
        [
            f"`{r['policy']}`",
            f"`{r['cache']}`",
            num(r["replay_ms"], ".2f"),
            num(r["ttft_median_ms"], ".0f"),
        ]
        for _, r in summary.iterrows()
    ]
    header = ["Policy", "Cache", "Replay's own work per turn, median ms", "TTFT median ms"]
    intro = (
        "Rendering the template, tokenizing and comparing (the policy, the tripwire, the "
        "shift's span) happen before the timed call, never inside it."
    )
    return Section("The replay's own work", [intro, Table(header, rows)])


def build(turns: pd.DataFrame, model_name: str) -> tuple[Document, pd.DataFrame, pd.DataFrame]:
    """The document, the summary table and the quality table of the replay's turns."""
    summary = summarize_turns(turns)
    table = quality_by_shifts(turns)
    warnings = []
    unverified = int(summary["turns_unverified"].sum()) if len(summary) else 0
    if unverified:
        warnings.append(
            f"{unverified} turn(s) failed cache verification (`cache_verified` is False); they "
            "are left out of every number below."
        )
    sections = [_per_policy(summary), _quality(table), _work(summary)]
    return Document(f"Conversations replayed: {model_name}", sections, warnings), summary, table


def write_conversations_summary(
    csv_paths: Paths,
    out_csv: str | os.PathLike[str],
    out_quality_csv: str | os.PathLike[str],
    out_md: str | os.PathLike[str],
    out_html: str | os.PathLike[str] | None,
    model_name: str,
) -> None:
    """The summary per policy and cache behaviour, the quality table, and the Markdown
    and HTML pages, from the replay CSVs (what the workflow's rule and ``kvcache-plot``
    both make)."""
    doc, summary, table = build(load_turns(csv_paths), model_name)
    with atomic_open(out_csv, "w") as fh:
        summary.to_csv(fh, index=False, float_format="%.6g")
    with atomic_open(out_quality_csv, "w") as fh:
        table.to_csv(fh, index=False, float_format="%.6g")
    with atomic_open(out_md, "w") as fh:
        fh.write(to_markdown(doc))
    if out_html is not None:
        pages.write_page(out_html, doc.title, to_html(doc))


def plot_conversation_csvs(
    csv_paths: Paths,
    out_ttft: str | os.PathLike[str],
    out_tokens: str | os.PathLike[str],
    out_quality: str | os.PathLike[str],
    model_name: str,
) -> None:
    """The three figures of the replay, from its CSVs."""
    turns = load_turns(csv_paths)
    conversations_plot.plot_ttft(turns, out_ttft, model_name)
    conversations_plot.plot_tokens(turns, out_tokens, model_name)
    conversations_plot.plot_quality(turns, out_quality, model_name)
