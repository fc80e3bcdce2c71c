"""The conversation replay, summarised per policy and cache behaviour.

Each replay CSV holds one row per turn (:data:`~kvcache_exp.chat.columns.TURN_COLUMNS`).
Turns whose reuse the engine's counters did not prove (``cache_verified`` false) are
counted and enter no statistic. The unit of resampling is the conversation: a
conversation's turns depend on each other (the same cache, the same history), so every
interval resamples whole conversations, through the package's one bootstrap
(:func:`.stats.stratified_bootstrap`, its seed, resamples and level), with the
conversations' indices as the sample and statistics that pool the chosen conversations'
turns. The rule for slow outliers (:mod:`.trials`) is not applied: a turn's TTFT varies
by design (a turn after a drop recomputes most of its prompt), so a slow turn is the
measurement itself, not a hiccup.

Per (set, policy, cache) the summary gives the median and 95th-percentile TTFT, how
often the policy removed something and what such a turn cost, the tokens evaluated per
conversation, the share of prompt tokens reused, the tripwires by cause, the decode
rate and the replay's own work per turn; the quality table gives the shifted cache's
quality by the number of shifts its cells have been through.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from kvcache_exp.analysis import stats
from kvcache_exp.analysis.load import verified_flags
from kvcache_exp.chat.columns import TEXT_COLUMNS, TURN_COLUMNS
from kvcache_exp.chat.tripwire import CAUSES

#: The percentile of TTFT that shows the slow turns (those after a drop).
TAIL = 95
#: summary CSV: one row per (set, policy, cache).
SUMMARY_COLUMNS: tuple[str, ...] = (
    "set",
    "policy",
    "cache",
    "conversations",
    "turns",  # verified turns
    "turns_unverified",
    "ttft_median_ms",
    "ttft_median_ci_low_ms",
    "ttft_median_ci_high_ms",
    f"ttft_p{TAIL}_ms",
    f"ttft_p{TAIL}_ci_low_ms",
    f"ttft_p{TAIL}_ci_high_ms",
    "removed_share",  # share of turns in which the policy removed something
    "ttft_removed_median_ms",  # median TTFT of those turns
    "evaluated_total",  # tokens evaluated by the timed calls, all conversations
    "evaluated_per_conversation",  # median over the (wholly verified) conversations
    "evaluated_per_conversation_ci_low",
    "evaluated_per_conversation_ci_high",
    "reused_share",  # prompt tokens reused / prompt tokens, pooled
    "reused_share_ci_low",
    "reused_share_ci_high",
    *(f"tripwire_{cause}" for cause in CAUSES),
    "decode_tok_s",  # median over live turns
    "replay_ms",  # median of render + tokenize + compare per turn
    "max_shifts",
)
#: quality CSV: one row per (set, policy, cache, shifts) with measured quality.
QUALITY_COLUMNS: tuple[str, ...] = (
    "set",
    "policy",
    "cache",
    "shifts",
    "conversations",
    "turns",
    "kl_mean",  # median over the turns of each turn's mean KL
    "kl_mean_ci_low",
    "kl_mean_ci_high",
    "top1_agreement",
    "top1_agreement_ci_low",
    "top1_agreement_ci_high",
    "first_divergence",  # median
    "quality_positions",  # median
)
_KEY = ["set", "policy", "cache"]


class ConversationCSVError(ValueError):
    """A replay CSV that cannot be summarised; the message names the file."""


def family(job_set: str) -> str:
    """The set a shard belongs to (``chats.3`` → ``chats``), for pooling shards."""
    return re.sub(r"\.\d+$", "", job_set)


def load_turns(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Every replay CSV, checked for its columns, concatenated (shards pooled by set)."""
    frames = []
    for path in map(Path, paths):
        try:
            df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise ConversationCSVError(f"{path}: cannot read it as a replay CSV: {err}") from err
        missing = [c for c in TURN_COLUMNS if c not in df.columns]
        if missing:
            raise ConversationCSVError(f"{path}: not a replay CSV (no {', '.join(missing[:4])})")
        for column in set(TURN_COLUMNS) - TEXT_COLUMNS - {"removed", "cache_verified"}:
            df[column] = pd.to_numeric(df[column], errors="coerce")
        frames.append(df[list(TURN_COLUMNS)])
    if not frames:
        return pd.DataFrame(columns=list(TURN_COLUMNS))
    turns = pd.concat(frames, ignore_index=True)
    turns["set"] = turns["set"].map(family)
    turns["verified"] = verified_flags(turns["cache_verified"]).eq(True)
    turns["removed"] = verified_flags(turns["removed"]).eq(True)
    return turns


# --------------------------------------------------------------------------- resampling


def _counts(index: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` conversations is drawn in each resample (rows)."""
    rows = np.atleast_2d(np.asarray(index, dtype=float)).astype(int)
    counts = np.zeros((rows.shape[0], n))
    np.add.at(counts, (np.repeat(np.arange(rows.shape[0]), rows.shape[1]), rows.ravel()), 1)
    return counts


def _pooled_quantile(values: np.ndarray, owner: np.ndarray, n: int, q: float) -> Callable:
    """The statistic "the ``q`` quantile of the drawn conversations' pooled values"
    (numpy's linear interpolation), for :func:`.stats.stratified_bootstrap` resampling
    conversation indices."""
    order = np.argsort(values, kind="stable")
    x, who = values[order], owner[order]

    def statistic(index: np.ndarray, axis: int = -1) -> np.ndarray:
        single = np.ndim(index) == 1
        weights = _counts(index, n)[:, who]
        cumulative = np.cumsum(weights, axis=1)
        total = cumulative[:, -1]
        h = q * (total - 1)
        low = np.floor(h)
        i_lo = np.minimum((cumulative <= low[:, None]).sum(axis=1), x.size - 1)
        i_hi = np.minimum((cumulative <= (low + 1)[:, None]).sum(axis=1), x.size - 1)
        found = x[i_lo] + (h - low) * (x[i_hi] - x[i_lo])
        found = np.where(total > 0, found, math.nan)
        return found[0] if single else found

    return statistic


def _pooled_ratio(numerator: np.ndarray, denominator: np.ndarray) -> Callable:
    """The statistic "sum of the drawn conversations' numerators over their
    denominators" (per-conversation sums given)."""

    def statistic(index: np.ndarray, axis: int = -1) -> np.ndarray:
        single = np.ndim(index) == 1
        counts = _counts(index, numerator.size)
        with np.errstate(divide="ignore", invalid="ignore"):
            found = (counts @ numerator) / (counts @ denominator)
        return found[0] if single else found

    return statistic


def _over_conversations(rows: pd.DataFrame, column: str, q: float) -> stats.Interval:
    """The ``q`` quantile of ``column`` over ``rows``, its interval resampling whole
    conversations."""
    values = rows[column].to_numpy(dtype=float)
    keep = np.isfinite(values)
    if not keep.any():
        return stats.Interval(math.nan, math.nan, math.nan)
    codes, names = pd.factorize(rows["conversation"][keep])
    statistic = _pooled_quantile(values[keep], codes, len(names), q)
    return stats.stratified_bootstrap([np.arange(len(names), dtype=float)], statistic)[0]


# --------------------------------------------------------------------------- tables


def _group_row(key: tuple[str, str, str], rows: pd.DataFrame) -> dict[str, object]:
    good = rows[rows["verified"]]
    conversations = good["conversation"].nunique()
    median = _over_conversations(good, "ttft_ms", 0.5)
    tail = _over_conversations(good, "ttft_ms", TAIL / 100)
    whole = rows.groupby("conversation")["verified"].all()
    complete = good[good["conversation"].isin(whole[whole].index)]
    per_conversation = complete.groupby("conversation")["evaluated_tokens"].sum()
    evaluated = stats.median_ci(per_conversation.to_numpy(dtype=float))
    sums = good.groupby("conversation")[["cached_tokens", "prompt_tokens"]].sum()
    reused = stats.stratified_bootstrap(
        [np.arange(len(sums), dtype=float)],
        _pooled_ratio(
            sums["cached_tokens"].to_numpy(dtype=float),
            sums["prompt_tokens"].to_numpy(dtype=float),
        ),
    )[0]
    causes = good["tripwire_cause"].value_counts()
    work = good[["render_ms", "tokenize_ms", "compare_ms"]].sum(axis=1)
    return {
        **dict(zip(_KEY, key, strict=True)),
        "conversations": conversations,
        "turns": len(good),
        "turns_unverified": int((~rows["verified"]).sum()),
        "ttft_median_ms": median.estimate,
        "ttft_median_ci_low_ms": median.low,
        "ttft_median_ci_high_ms": median.high,
        f"ttft_p{TAIL}_ms": tail.estimate,
        f"ttft_p{TAIL}_ci_low_ms": tail.low,
        f"ttft_p{TAIL}_ci_high_ms": tail.high,
        "removed_share": float(good["removed"].mean()) if len(good) else math.nan,
        "ttft_removed_median_ms": stats.median(good.loc[good["removed"], "ttft_ms"]),
        "evaluated_total": int(good["evaluated_tokens"].sum()),
        "evaluated_per_conversation": evaluated.estimate,
        "evaluated_per_conversation_ci_low": evaluated.low,
        "evaluated_per_conversation_ci_high": evaluated.high,
        "reused_share": reused.estimate,
        "reused_share_ci_low": reused.low,
        "reused_share_ci_high": reused.high,
        **{f"tripwire_{cause}": int(causes.get(cause, 0)) for cause in CAUSES},
        "decode_tok_s": stats.median(good["decode_tok_s"]),
        "replay_ms": stats.median(work),
        "max_shifts": float(good["shifts"].max()) if good["shifts"].notna().any() else math.nan,
    }


def summarize_turns(turns: pd.DataFrame) -> pd.DataFrame:
    """One row per (set, policy, cache), in the order they first appear."""
    if turns.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    found = [_group_row(key, rows) for key, rows in turns.groupby(_KEY, sort=False)]
    return pd.DataFrame(found, columns=list(SUMMARY_COLUMNS))


def quality_by_shifts(turns: pd.DataFrame) -> pd.DataFrame:
    """One row per (set, policy, cache, shifts) among the verified turns whose quality
    was measured: how far a cache whose cells were shifted that many times answers from
    a full recompute of the same prompt."""
    measured = turns[turns["verified"] & (turns["quality_positions"] > 0)] if len(turns) else turns
    if measured.empty:
        return pd.DataFrame(columns=list(QUALITY_COLUMNS))
    found = []
    for key, rows in measured.groupby([*_KEY, "shifts"], sort=True):
        kl = _over_conversations(rows, "kl_mean", 0.5)
        top1 = _over_conversations(rows, "top1_agreement", 0.5)
        found.append(
            {
                **dict(zip([*_KEY, "shifts"], key, strict=True)),
                "conversations": rows["conversation"].nunique(),
                "turns": len(rows),
                "kl_mean": kl.estimate,
                "kl_mean_ci_low": kl.low,
                "kl_mean_ci_high": kl.high,
                "top1_agreement": top1.estimate,
                "top1_agreement_ci_low": top1.low,
                "top1_agreement_ci_high": top1.high,
                "first_divergence": stats.median(rows["first_divergence"]),
                "quality_positions": stats.median(rows["quality_positions"]),
            }
        )
    table = pd.DataFrame(found, columns=list(QUALITY_COLUMNS))
    order = {k: i for i, k in enumerate(measured[_KEY].drop_duplicates().itertuples(index=False))}
    table["_order"] = [order[tuple(r)] for r in table[_KEY].itertuples(index=False)]
    return table.sort_values(["_order", "shifts"], kind="stable").drop(columns="_order")
