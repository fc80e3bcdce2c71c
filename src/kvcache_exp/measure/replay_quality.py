"""What a shifted cache costs in quality, turn by turn (untimed).

A KV shift keeps cells computed with other context before them and at other
positions; every further shift moves the same cells again. After a turn whose prompt
was evaluated from such a cache, the cache's next-token distributions over the reply's
first tokens (teacher-forced) are compared with those of a full recompute of the same
prompt, with the measures of the cures (:mod:`kvcache_exp.measure.quality`): KL
divergence, top-1 agreement, RMS Δp and the first divergence. The cache is snapshotted
before and restored after, so that the conversation goes on from exactly the state the
engine was in: the replay measures successive shifts of the same cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kvcache_exp.engines.base import CacheSurgeryEngine
from kvcache_exp.measure import quality


def _feed(engine: CacheSurgeryEngine, tokens: Sequence[int]) -> None:
    """Evaluate ``tokens`` after what is cached, a batch at a time."""
    for start in range(0, len(tokens), engine.n_batch):
        call = engine.first_token([*engine.cached, *tokens[start : start + engine.n_batch]])
        call.run()
        call.result()


def shifted_quality(
    engine: CacheSurgeryEngine, prompt: Sequence[int], scored: Sequence[int]
) -> tuple[quality.Quality, int]:
    """The cache's distributions after ``prompt`` and each of ``scored`` but the last,
    against a full recompute's; returns the comparison and the cache's highest position
    once restored.

    The engine's cache must hold ``prompt`` (evaluated from the shifted cache) and
    possibly the reply after it; it is put back as it was.
    """
    if not scored or len(prompt) < 2:
        return quality.NAN_QUALITY, engine.pos_max()
    inputs = [prompt[-1], *scored[:-1]]
    state = engine.snapshot()
    try:
        engine.truncate(len(prompt) - 1)
        shifted = engine.log_probs(inputs)
        engine.clear()
        _feed(engine, prompt[:-1])
        exact = engine.log_probs(inputs)
    finally:
        restored = engine.restore(state)
    found = quality.compare(exact, shifted, np.asarray(scored), len(scored))
    return found, restored
