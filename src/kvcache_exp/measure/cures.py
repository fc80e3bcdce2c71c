"""The cures for a miss, in-process: keep B's cache instead of recomputing it, and at what
cost.

After A is removed, the prompt ``[S, B, Q]`` no longer matches the cached ``[S, A, B]``.
Besides recomputing everything after S (the miss), an engine can:

* **shift**: drop A's cells and move B's cells back by |A| (llama.cpp re-rotates their
  RoPE keys), then evaluate only Q. llama-server does this with ``--cache-reuse``, chat
  front-ends with a context shift. B's states were computed with A in view, so the
  answer is no longer exact.
* **shift + recompute r, tail**: as the shift, then recompute the last ``r·|B|`` tokens
  of B with Q. They still attend to the first part of B, whose states saw A.
* **shift + recompute r, head**: as the shift, then recompute the first ``r·|B|`` tokens
  of B (in llama.cpp's second sequence, from the cells of S), so that the cache's start,
  which later tokens attend to most (the attention sink), is exact again. Same cost.

The kept prefix S matters: with S empty the shift moves B's first cell to position 0,
although its keys and values were computed as a middle token; every model that relies on
an attention sink then sees a cache without a valid first cell. So the cures are measured
at several S (:mod:`.cure_plan`), one set of rows each.

Trial t of each S measures every cure on its own prompt t, from a snapshot of its warmed
cache, in a shuffled order; each timed call does the cure's whole work (cache
operations, evaluation, one sampled token), and its cache is then proved to hold exactly
``[S, B, Q]`` at positions 0.. (:func:`.checks.check_cure`). Untimed, the cure's
next-token distributions over Q and a greedy continuation of the exact answer are
compared with the exact answer's (:mod:`.quality`); the exact answer is a full recompute
of ``[S, B, Q]`` from an empty cache. The miss, which reaches the exact answer through
the cures' own path (restored snapshot, cache operation, batch, scoring), is the noise
floor of that comparison; the ``cached_vs_full`` row says, separately, how far the exact
answer through a prefix-cache hit is from one full recompute (on a CPU, not at all; on a
GPU, not bit-identical).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from kvcache_exp.engines.base import CacheSurgeryEngine
from kvcache_exp.measure import protocol, quality
from kvcache_exp.measure.checks import check_cached_vs_full, check_cure
from kvcache_exp.measure.cure_plan import (
    CACHED_VS_FULL,
    HIT,
    MISS,
    TAIL,
    Cure,
    PromptFactory,
    cure_columns,
    in_order,
    log_row,
    plan,
    shuffled,
    sizes,
)
from kvcache_exp.measure.prompts import PromptSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    """The exact answer: a full recompute of ``[S, B, Q]`` from an empty cache, its greedy
    continuation (ending with the end-of-generation token when the model stopped early),
    and the next-token log-probabilities over Q and that continuation (teacher-forced,
    the context ``[S, B]`` cached first: an exact prefix-cache hit)."""

    context: list[int]
    scored: list[int]
    continuation: list[int]
    log_probs: np.ndarray
    next_tokens: np.ndarray

    def compare(self, log_probs: np.ndarray) -> quality.Quality:
        """Another computation's log-probabilities over the same positions, against it."""
        return quality.compare(self.log_probs, log_probs, self.next_tokens, len(self.continuation))


def reference(engine: CacheSurgeryEngine, prompts: PromptSet, n_tokens: int) -> Reference:
    """The exact answer of ``prompts`` (untimed; the cache is left empty): ``[S, B, Q]``
    evaluated from an empty cache and its greedy continuation generated; then, with
    ``[S, B]`` kept from that very computation, Q and the continuation scored again in
    one batch, the way every cure is scored."""
    engine.clear()
    call = engine.generation(prompts.miss, n_tokens)
    call.run()
    result = call.result()
    continuation = [*result.tokens]
    if "stop_token" in result.extra:
        continuation.append(int(result.extra["stop_token"]))
    q = list(prompts.q.tokens)
    context = prompts.miss[: len(prompts.miss) - len(q)]
    scored = q + continuation[:-1]
    engine.truncate(len(context))
    logp = engine.log_probs(scored)
    engine.clear()
    return Reference(context, scored, continuation, logp, np.array(q[1:] + continuation))


def _cure_quality(engine: CacheSurgeryEngine, ref: Reference) -> Any:
    """The cure's distributions over Q and the reference continuation, from the cure's
    cache of ``[S, B]`` (Q's cells are dropped and Q evaluated again with every logit)."""
    engine.truncate(len(ref.context))
    return ref.compare(engine.log_probs(ref.scored))


def _prepare(engine: CacheSurgeryEngine, cure: Cure, prompts: PromptSet) -> tuple[Any, int]:
    """The cure's timed call, prepared, and the tokens it must evaluate."""
    q = len(prompts.q.tokens)
    if cure.name == HIT:
        return engine.first_token(prompts.hit), q
    if cure.name == MISS:
        return engine.first_token(prompts.miss), len(prompts.miss) - len(prompts.s.tokens)
    k = cure.recompute_tokens(len(prompts.b.tokens))
    where = cure.where or TAIL  # the plain shift recomputes nothing: either reads the same
    call = engine.shifted_first_token(prompts.miss, prompts.removed, recompute=k, where=where)
    return call, k + q


def _cached_vs_full(engine: CacheSurgeryEngine, ref: Reference) -> tuple[quality.Quality, str]:
    """The exact answer through a prefix-cache hit (the reference) against one full
    recompute of ``[S, B, Q, continuation]`` in batches, and why that recompute is not
    what it claims ('' when it is)."""
    engine.clear()
    everything = ref.context + ref.scored
    logp = engine.log_probs(everything, scored=len(ref.scored))
    note = check_cached_vs_full(engine.pos_min(), engine.cache_positions(), len(everything))
    engine.clear()
    return ref.compare(logp), note


def run_cures(
    engine: CacheSurgeryEngine,
    prompt_for: PromptFactory,
    *,
    keep_sizes: list[int],
    trials: int,
    warmup_tokens: int,
    settle_s: float,
    recompute_shares: list[float],
    quality_tokens: int,
    seed: int,
    rows: list[dict[str, Any]],
) -> None:
    """Every cure at every kept prefix size, ``trials`` trials each (trial t on prompt t
    of ``prompt_for``), plus one ``cached_vs_full`` row per trial at the first size.
    Rows go into ``rows`` as they are measured, so that a caller keeps them when the
    engine fails half-way."""
    correction = engine.position_correction()
    cures = plan(recompute_shares)
    for keep in keep_sizes:
        for trial in range(1, trials + 1):
            prompts, snapshot, held = _warm(engine, prompt_for, trial - 1, keep, warmup_tokens)
            ref = reference(engine, prompts, quality_tokens)
            shared = {"trial": trial, **sizes(prompts, correction)}
            if keep == keep_sizes[0]:
                found, note = _cached_vs_full(engine, ref)
                rows.append(_numerics_row(shared, found, note))
                log_row(rows[-1])
            for order, cure, before in in_order(shuffled(cures, seed, keep, trial)):
                restored = engine.restore(snapshot)
                call, expected = _prepare(engine, cure, prompts)
                if order == 1:  # once per trial: its cures then run back to back
                    time.sleep(settle_s)
                measured = protocol.timed(call)
                prompt = prompts.hit if cure.name == HIT else prompts.miss
                pos_min, positions = engine.pos_min(), engine.cache_positions()
                note = check_cure(
                    measured,
                    expected,
                    restored=restored,
                    warm_held=held,
                    pos_min=pos_min,
                    positions=positions,
                    prompt=len(prompt),
                )
                found = quality.NAN_QUALITY if cure.name == HIT else _cure_quality(engine, ref)
                rows.append(
                    {
                        **shared,
                        **cure_columns(cure, shared["size_b"]),
                        "order": order,
                        "predecessor": before,
                        "tokens_expected": expected,
                        **measured.timing_columns(),
                        "restored_pos_max": restored,
                        "cache_pos_min": pos_min,
                        "cache_cells": math.nan if positions is None else len(positions),
                        "cache_verified": note == "",
                        "cache_note": note,
                        **found.as_columns(),
                    }
                )
                log_row(rows[-1])
    engine.clear()


def _warm(
    engine: CacheSurgeryEngine,
    prompt_for: PromptFactory,
    variant: int,
    keep: int,
    warmup_tokens: int,
) -> tuple[PromptSet, Any, int]:
    """Warm ``[S, A, B]`` of prompt ``variant`` as the seed does (with ``warmup_tokens``
    generated) and snapshot it; Q is chosen not to start with the token the model
    generated first, which a hit would otherwise reuse (A and B stay the same, so the
    warm cache stays valid). Returns the prompts, the snapshot and the tokens it holds."""
    prompts = prompt_for(variant, keep, None)
    engine.clear()
    warm = engine.generation(prompts.warmup, warmup_tokens)
    warm.run()
    generated = warm.result().tokens  # none when the model ended at once
    if generated and prompts.q.tokens[0] == generated[0]:
        log.info("Q would start with the model's continuation of [S, A, B]; choosing another")
        prompts = prompt_for(variant, keep, generated[0])
    return prompts, engine.snapshot(), len(engine.cached)


def _numerics_row(shared: dict[str, Any], found: quality.Quality, note: str) -> dict[str, Any]:
    """The ``cached_vs_full`` row: untimed, so without the timing columns."""
    return {
        **shared,
        "cure": CACHED_VS_FULL,
        "order": 0,
        "predecessor": "",
        "recompute_where": "",
        "cache_verified": note == "",
        "cache_note": note,
        **found.as_columns(),
    }
