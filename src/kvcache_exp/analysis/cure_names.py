"""The cures' names, as the producer writes them and as people read them.

One place for every name a cures CSV may hold (:func:`is_known`), their order in tables
and figures (:func:`cure_rank`) and their labels (:func:`cure_label`), so that the
loader, the summary, the report and the figure agree on them.
"""

from __future__ import annotations

import math
import re

#: The two ends every cure lies between, and the plain KV shift.
HIT, MISS, SHIFT = "hit", "miss", "shift"
#: llama-server's own KV shift (``--cache-reuse``), measured through the server engines.
SERVER_CACHE_REUSE = "server_cache_reuse"
#: Not a cure: the exact answer through a prefix-cache hit against one full recompute.
CACHED_VS_FULL = "cached_vs_full"
ENDS: tuple[str, ...] = (HIT, MISS)
#: The miss reaches the exact answer through the cures' own path: it is their noise floor.
FLOOR = MISS
HEAD, TAIL = "head", "tail"
#: ``shift_{tail|head}_{r}``: the shift, then r·|B| tokens of B recomputed (its last or
#: its first ones); ``shift_recompute_{r}`` is the tail's earlier name.
_RECOMPUTE = re.compile(r"shift_(?:(?P<where>tail|head)|recompute)_(?P<r>[0-9.eE+-]+)")


def _parse(cure: str) -> tuple[str, float] | None:
    """(where, r) of a shift + recompute cure, or None."""
    match = _RECOMPUTE.fullmatch(cure)
    if not match:
        return None
    try:
        share = float(match.group("r"))
    except ValueError:
        return None
    if not 0 < share <= 1:
        return None
    return match.group("where") or TAIL, share


def recompute_share(cure: str) -> float:
    """The share r of B a cure recomputes: 0 for the shift (and the server's reuse), r for
    ``shift_{tail|head}_{r}``, NaN for anything else (the hit, the miss, an unknown name)."""
    if cure in (SHIFT, SERVER_CACHE_REUSE):
        return 0.0
    parsed = _parse(cure)
    return parsed[1] if parsed else math.nan


def recompute_where(cure: str) -> str:
    """``head`` or ``tail`` for a shift + recompute cure, '' for anything else."""
    parsed = _parse(cure)
    return parsed[0] if parsed else ""


def is_known(cure: str) -> bool:
    """Whether ``cure`` is a name the producer writes (a typo must not become a new cure)."""
    return cure in (HIT, MISS, SHIFT, SERVER_CACHE_REUSE, CACHED_VS_FULL) or bool(_parse(cure))


def cure_rank(cure: str) -> tuple[int, float]:
    """Sort key: the hit, the miss, the shift (and the server's), the tail recomputes by
    increasing r, then the head ones, then the numerics row."""
    fixed = {HIT: 0, MISS: 1, SHIFT: 2, SERVER_CACHE_REUSE: 2, CACHED_VS_FULL: 6}
    if cure in fixed:
        return fixed[cure], 1.0 if cure == SERVER_CACHE_REUSE else 0.0
    parsed = _parse(cure)
    if parsed:
        return (3 if parsed[0] == TAIL else 4), parsed[1]
    return 5, 0.0


def is_uncorrected(position_correction: object) -> bool:
    """Whether a shift could not correct B's positions (absolute position embeddings)."""
    return str(position_correction).strip().lower().startswith("none")


def cure_label(cure: str, uncorrected: bool = False) -> str:
    """A cure's name for people, e.g. ``shift + recompute 25% (head)``; shift cures of a
    model with absolute positions are labelled "uncorrected", since their positions stay
    wrong."""
    if cure == HIT:
        return "hit"
    if cure == MISS:
        return "miss (full recompute)"
    if cure == CACHED_VS_FULL:
        return "exact prefix hit vs full recompute"
    if cure == SERVER_CACHE_REUSE:
        label = "server cache reuse (KV shift)"
    elif cure == SHIFT:
        label = SHIFT
    elif parsed := _parse(cure):
        label = f"shift + recompute {parsed[1] * 100:g}% ({parsed[0]})"
    else:
        return cure
    return f"uncorrected {label}" if uncorrected else label


def config_label(keep_tokens: int, size_a: int, size_b: int) -> str:
    """``A/B`` as the seed writes configurations, with the kept prefix S."""
    return f"{int(size_a)}/{int(size_b)}, S={int(keep_tokens)}"
