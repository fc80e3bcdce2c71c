"""The cures' verdicts: does each cure, at each kept prefix size, win back most of the
miss penalty, and does it answer like a full recompute?

Both are three-valued (SUPPORTED, NOT SUPPORTED, UNDETERMINED) and decided from the
intervals of :func:`.cures.summarize_cures` (so that a caller who has the table need not
bootstrap again); each reason names the numbers and the rule. The thresholds are stated
once, in :mod:`.cures`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kvcache_exp.analysis.cure_names import (
    CACHED_VS_FULL,
    ENDS,
    cure_label,
    cure_rank,
    is_uncorrected,
)
from kvcache_exp.analysis.cures import EXACT_MAX_KL, EXACT_MIN_TOP1, RECOVER_MIN_SHARE
from kvcache_exp.analysis.formatting import ci, finite, num, pct, pct_ci
from kvcache_exp.analysis.verdicts import NOT_SUPPORTED, SUPPORTED, UNDETERMINED, Verdict


def _combine(outcomes: list[str]) -> str:
    """Not supported when any configuration is not, supported when every one is."""
    if NOT_SUPPORTED in outcomes:
        return NOT_SUPPORTED
    if outcomes and all(o == SUPPORTED for o in outcomes):
        return SUPPORTED
    return UNDETERMINED


def _pct(value: float) -> str:
    return pct(value, ".0f")


def _pct_with_ci(row: pd.Series, name: str) -> str:
    """``row[name]`` and its interval as percentages, e.g. ``91% [85%, 97%]``."""
    low, high = row[f"{name}_ci_low"], row[f"{name}_ci_high"]
    return f"{_pct(row[name])} {pct_ci(low, high, '.0f')}"


def _row_label(row: pd.Series) -> str:
    return f"{int(row['size_a'])}/{int(row['size_b'])}"


def _recovery_outcome(row: pd.Series) -> str:
    low, high = float(row["recovered_ci_low"]), float(row["recovered_ci_high"])
    if not finite(low, high):
        return UNDETERMINED
    if low > RECOVER_MIN_SHARE:
        return SUPPORTED
    if high < RECOVER_MIN_SHARE:
        return NOT_SUPPORTED
    return UNDETERMINED


_RECOVERY_RULE = (
    f"Rule, at each kept prefix size: supported when, in every configuration, the whole 95% "
    f"CI of the share of the "
    f"miss penalty recovered, (miss − cure) / (miss − hit) of the median TTFTs, lies above "
    f"{RECOVER_MIN_SHARE:.0%}; not supported when in any configuration it lies below "
    f"{RECOVER_MIN_SHARE:.0%}; otherwise (or when an interval is not defined) undetermined."
)


def _recovery_verdict(cure: str, keep: int, rows: pd.DataFrame, label: str) -> Verdict:
    """Does the cure win back most of the time a miss loses?"""
    outcomes = [_recovery_outcome(r) for _, r in rows.iterrows()]
    parts = [
        f"{_row_label(r)}: {_pct_with_ci(r, 'recovered')} recovered (median TTFT "
        f"{num(r['ttft_ms'], '.1f', ' ms')}, {_pct_with_ci(r, 'share_of_miss')} of the "
        f"miss's; {int(r['n'])} trials) → {outcome}"
        for (_, r), outcome in zip(rows.iterrows(), outcomes, strict=True)
    ]
    status = _combine(outcomes)
    # rows holds one configuration at least; numpy's min and max are NaN when any bound is
    evidence = {
        "n_configs": float(len(rows)),
        "min_recovered": float(rows["recovered"].min()),
        "min_recovered_ci_low": float(np.min(rows["recovered_ci_low"].to_numpy())),
        "max_recovered_ci_high": float(np.max(rows["recovered_ci_high"].to_numpy())),
    }
    reason = f"{'; '.join(parts)}. {_RECOVERY_RULE}"
    claim = f"{label[0].upper()}{label[1:]} (S = {keep}) recovers most of the miss penalty"
    return Verdict(f"{cure}_s{keep}_recovers", claim, status, reason, evidence)


def _exact_outcome(row: pd.Series) -> str:
    kl_low, kl_high = float(row["kl_mean_ci_low"]), float(row["kl_mean_ci_high"])
    top_low = float(row["top1_agreement_ci_low"])
    top_high = float(row["top1_agreement_ci_high"])
    floor_kl, floor_top1 = float(row["floor_kl_mean"]), float(row["floor_top1_agreement"])
    floor_misses = (math.isfinite(floor_top1) and floor_top1 < EXACT_MIN_TOP1) or (
        math.isfinite(floor_kl) and floor_kl > EXACT_MAX_KL
    )
    if floor_misses:
        return UNDETERMINED  # the comparison itself cannot resolve the thresholds here
    if (math.isfinite(top_high) and top_high < EXACT_MIN_TOP1) or (
        math.isfinite(kl_low) and kl_low > EXACT_MAX_KL
    ):
        return NOT_SUPPORTED
    if top_low >= EXACT_MIN_TOP1 and kl_high <= EXACT_MAX_KL:  # False when either is NaN
        return SUPPORTED
    return UNDETERMINED


_EXACT_RULE = (
    f"Rule, at each kept prefix size, with 95% bootstrap intervals over the prompts: "
    f"supported when, in every configuration, the whole interval of the top-1 agreement "
    f"with the exact answer lies at or above {EXACT_MIN_TOP1:.0%} and the whole interval of "
    f"the mean KL(exact ‖ cure) at or below {EXACT_MAX_KL:g} nats; not supported when, in "
    "any, either interval lies wholly on the wrong side; undetermined otherwise, when an "
    "interval is missing, or where the noise floor (the miss: the exact answer through the "
    "cures' own path) itself misses a threshold."
)


def _exact_verdict(
    cure: str, keep: int, rows: pd.DataFrame, label: str, uncorrected: bool
) -> Verdict:
    """Does the cure answer like a full recompute, within stated thresholds?"""
    outcomes = [_exact_outcome(r) for _, r in rows.iterrows()]
    parts = [
        f"{_row_label(r)}: top-1 {_pct_with_ci(r, 'top1_agreement')}, mean KL "
        f"{num(r['kl_mean'], '.3g', ' nats')} "
        f"{ci(r['kl_mean_ci_low'], r['kl_mean_ci_high'], '.3g')} over {int(r['n'])} prompts "
        f"(noise floor: top-1 {_pct(r['floor_top1_agreement'])}, mean KL "
        f"{num(r['floor_kl_mean'], '.3g')}) → {outcome}"
        for (_, r), outcome in zip(rows.iterrows(), outcomes, strict=True)
    ]
    status = _combine(outcomes)
    note = (
        " This model has absolute position embeddings: a shift cannot correct B's positions, "
        "so this is an uncorrected shift, and its quality says nothing about a RoPE model's."
        if uncorrected
        else ""
    )
    # rows holds one configuration at least; numpy's min and max are NaN when any value is
    evidence = {
        "n_configs": float(len(rows)),
        "max_kl_mean": float(np.max(rows["kl_mean"].to_numpy())),
        "min_top1_agreement": float(np.min(rows["top1_agreement"].to_numpy())),
        "max_floor_kl_mean": float(rows["floor_kl_mean"].max()),
    }
    reason = f"{'; '.join(parts)}.{note} {_EXACT_RULE}"
    claim = f"{label[0].upper()}{label[1:]} (S = {keep}) answers like a full recompute"
    return Verdict(f"{cure}_s{keep}_exact", claim, status, reason, evidence)


def verdicts_from_summary(summary: pd.DataFrame) -> list[Verdict]:
    """The two verdicts of every cure other than the hit and the miss, at each kept prefix
    size, from :func:`summarize_cures`'s table (so that a caller who has it need not
    bootstrap again).

    For each cure in cure order, then each kept prefix size: "<cure>_s<S>_recovers"
    (speed), then "<cure>_s<S>_exact" (quality).
    """
    found: list[Verdict] = []
    names = set(summary["cure"].astype(str)) - set(ENDS) - {CACHED_VS_FULL}
    for cure in sorted(names, key=cure_rank):
        mine = summary[summary["cure"] == cure]
        uncorrected = any(is_uncorrected(p) for p in mine["position_correction"])
        label = cure_label(cure, uncorrected)
        for keep in dict.fromkeys(int(k) for k in mine["keep_tokens"]):
            rows = mine[mine["keep_tokens"] == keep]
            found.append(_recovery_verdict(cure, keep, rows, label))
            found.append(_exact_verdict(cure, keep, rows, label, uncorrected))
    return found
