"""The longest common prefix of two token sequences: what every prefix cache reuses.

One definition for the engine (which cached tokens a call keeps), the prefix tripwire
(where a conversation's new prompt leaves the cache) and the replay's cache behaviours,
so that they can never disagree on where a prefix ends.
"""

from __future__ import annotations

from collections.abc import Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
