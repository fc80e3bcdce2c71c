"""The cures' names, as the producer writes them and as people read them.

One place for every name a cures CSV may hold (:func:`is_known`), their order in tables
and figures (:func:`cure_rank`) and their labels (:func:`cure_label`), so that the
loader, the summary, the report and the figure agree on them.
"""

from __future__ import annotations

import math

#: The two ends every cure lies between, the plain KV shift, and the row that measures the
#: quality comparison's noise.
HIT, MISS, SHIFT, NOISE_FLOOR = "hit", "miss", "shift", "noise_floor"
#: llama-server's own KV shift (``--cache-reuse``), measured through the server engines.
SERVER_CACHE_REUSE = "server_cache_reuse"
ENDS: tuple[str, ...] = (HIT, MISS)
#: ``shift_recompute_{r}``: the shift, then the last r·|B| tokens of B recomputed.
_RECOMPUTE_PREFIX = "shift_recompute_"


def recompute_share(cure: str) -> float:
    """The share r of B a cure recomputes: 0 for the shift, r for ``shift_recompute_{r}``,
    NaN for anything else (the hit, the miss, an unknown name)."""
    if cure == SHIFT:
        return 0.0
    if not cure.startswith(_RECOMPUTE_PREFIX):
        return math.nan
    try:
        share = float(cure[len(_RECOMPUTE_PREFIX) :])
    except ValueError:
        return math.nan
    return share if 0 < share <= 1 else math.nan


def is_known(cure: str) -> bool:
    """Whether ``cure`` is a name the producer writes (a typo must not become a new cure)."""
    known = (HIT, MISS, SHIFT, SERVER_CACHE_REUSE, NOISE_FLOOR)
    return cure in known or math.isfinite(recompute_share(cure))


def cure_rank(cure: str) -> tuple[int, float]:
    """Sort key: the hit, the miss, the shift, then shift + recompute by increasing r."""
    fixed = {HIT: 0, MISS: 1, SHIFT: 2}
    if cure in fixed:
        return fixed[cure], 0.0
    if cure == SERVER_CACHE_REUSE:
        return 2, 1.0
    share = recompute_share(cure)
    return (3, share) if math.isfinite(share) else (4, 0.0)


def is_uncorrected(position_correction: object) -> bool:
    """Whether a shift could not correct B's positions (absolute position embeddings)."""
    return str(position_correction).strip().lower().startswith("none")


def cure_label(cure: str, uncorrected: bool = False) -> str:
    """A cure's name for people, e.g. ``shift + recompute 25%``; shift cures of a model
    with absolute positions are labelled "uncorrected", since their positions stay wrong."""
    if cure == HIT:
        return "hit"
    if cure == MISS:
        return "miss (full recompute)"
    if cure == SERVER_CACHE_REUSE:
        label = "server cache reuse (KV shift)"
        return f"uncorrected {label}" if uncorrected else label
    share = recompute_share(cure)
    if not math.isfinite(share):
        return cure
    label = SHIFT if share == 0 else f"shift + recompute {share * 100:g}%"
    return f"uncorrected {label}" if uncorrected else label


def config_label(keep_tokens: int, size_a: int, size_b: int) -> str:
    """``A/B`` as the seed writes configurations, with the kept prefix S when there is one."""
    label = f"{int(size_a)}/{int(size_b)}"
    return f"{label} (S={int(keep_tokens)})" if keep_tokens else label
