"""What the cures measure, in which order, on which prompts: shared by the in-process
cures (:mod:`.cures`) and the ones through a server (:mod:`.server_cures`).

The cures are measured at every kept prefix size S (``cure_keep_tokens``), on
``quality_prompts`` distinct prompts each: trial t measures every cure on prompt t, from
one warmed cache of its ``[S, A, B]``. Within a trial the cures run in a shuffled order
(a fixed seed per configuration, S and trial), and each row records the cure that ran
just before it, so that no cure always follows the same one (the rotation it replaces
was cyclic: every cure but the first always followed one and the same cure).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from kvcache_exp.measure.prompts import PromptSet

log = logging.getLogger(__name__)

HIT, MISS, SHIFT = "hit", "miss", "shift"
#: Not a cure: the exact answer through a prefix-cache hit against a full recompute, one
#: row per trial at the first kept prefix size (untimed; on a CPU they are bit-identical).
CACHED_VS_FULL = "cached_vs_full"
TAIL, HEAD = "tail", "head"

#: Builds trial t's prompts at kept prefix size S (t from 0), Q avoiding a first token.
PromptFactory = Callable[[int, int, int | None], PromptSet]


@dataclass(frozen=True)
class Cure:
    """One way of answering ``[S, B, Q]`` from the cache warmed with ``[S, A, B]``."""

    name: str
    share: float = math.nan  # share of B recomputed (shift cures)
    where: str = ""  # which part of B: HEAD or TAIL ("" for the rest)

    @property
    def is_shift(self) -> bool:
        return math.isfinite(self.share)

    def recompute_tokens(self, size_b: int) -> int:
        """Tokens of B it recomputes: round(share·|B|) (0 for the hit, the miss, the shift)."""
        return round(self.share * size_b) if self.is_shift else 0


def plan(recompute_shares: list[float]) -> list[Cure]:
    """The hit and the miss (the two ends), the shift, then shift + recompute r of the
    tail of B and of its head, at the same shares (equal cost)."""
    found = [Cure(HIT), Cure(MISS), Cure(SHIFT, 0.0)]
    shares = [float(r) for r in recompute_shares if r > 0]
    found += [Cure(f"shift_tail_{r:g}", r, TAIL) for r in shares]
    found += [Cure(f"shift_head_{r:g}", r, HEAD) for r in shares]
    return found


def shuffled(cures: list[Cure], seed: int, keep: int, trial: int) -> list[Cure]:
    """Trial ``trial``'s order of ``cures`` at kept prefix ``keep``: a permutation drawn
    from a generator seeded by (seed, keep, trial), so every run repeats it."""
    rng = np.random.default_rng([seed, keep, trial])
    return [cures[i] for i in rng.permutation(len(cures))]


def in_order(cures: list[Cure]) -> Iterator[tuple[int, Cure, str]]:
    """(position from 1, cure, the name of the cure before it or "")."""
    before = ""
    for position, cure in enumerate(cures, start=1):
        yield position, cure, before
        before = cure.name


def sizes(prompts: PromptSet, correction: str) -> dict[str, Any]:
    """The columns every row of one trial shares."""
    return {
        "keep_tokens": len(prompts.s.tokens),
        "size_a": len(prompts.a.tokens),
        "size_b": len(prompts.b.tokens),
        "size_q": len(prompts.q.tokens),
        "position_correction": correction,
    }


def cure_columns(cure: Cure, size_b: int) -> dict[str, Any]:
    """The columns that say which cure a row measured."""
    return {
        "cure": cure.name,
        "recompute_share": cure.share,
        "recompute_where": cure.where,
        "recompute_tokens": cure.recompute_tokens(size_b),
    }


def figure(value: float, fmt: str) -> str:
    """A number for a log line, or n/a where there is none (the hit has no quality)."""
    return "n/a" if value is None or not math.isfinite(float(value)) else format(value, fmt)


def log_row(row: dict[str, Any], engine_kind: str = "") -> None:
    """One line per measured cure, in the job's log."""
    log.info(
        "%scure S=%d trial %d %-16s after %-16s ttft=%s ms eval=%s kl_mean=%s top1=%s "
        "first_divergence=%s%s",
        engine_kind,
        row["keep_tokens"],
        row["trial"],
        row["cure"],
        row["predecessor"] or "-",
        figure(row.get("ttft_ms", math.nan), ".1f"),
        figure(row.get("prefill_tokens", math.nan) + row.get("decode_tokens", 0), ".0f"),
        figure(row.get("kl_mean", math.nan), ".4g"),
        figure(row.get("top1_agreement", math.nan), ".3f"),
        figure(row.get("first_divergence", math.nan), ".0f"),
        f" UNVERIFIED: {row['cache_note']}" if row.get("cache_note") else "",
    )
