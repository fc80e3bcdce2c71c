"""The cures for a miss: keep B's cache instead of recomputing it, and at what cost.

After A is removed, the prompt ``[S, B, Q]`` no longer matches the cached
``[S, A, B]``. Besides recomputing everything after S (the miss), an engine can:

* **shift**: drop A's cells and move B's cells back by |A| (llama.cpp re-rotates their
  RoPE keys), then evaluate only Q. llama.cpp's server does this with
  ``--cache-reuse``; B's states were computed with A before them, so the answer is no
  longer exact.
* **shift + recompute r**: as shift, then drop and recompute the last ``r·|B|`` tokens
  of B together with Q (as CacheBlend and EPIC recompute a share of the kept tokens),
  to win back quality.

Each trial starts from the same warmed cache, restored from a llama.cpp state snapshot
(re-warming ``[S, A, B]`` every time would dominate the run), and times one call that
does the cure's whole work: the cache operations, the evaluation and one sampled
token. The hit and the miss are measured the same way, as the two ends. After the
timed call, and untimed, the cure's next-token distributions over Q and a greedy
continuation of the exact answer are compared with the exact answer's
(:mod:`kvcache_exp.measure.quality`). A full recompute against another full recompute
with a different batch split gives the noise floor of that comparison.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kvcache_exp.columns import CURE_COLUMNS
from kvcache_exp.engines.base import CacheSurgeryEngine
from kvcache_exp.measure import protocol, quality
from kvcache_exp.measure.prompts import PromptSet

log = logging.getLogger(__name__)

#: The batch sizes of the second full recompute that measures the noise floor: the
#: context in batches of 64, the scored tokens one at a time. (On SmolLM2, llama.cpp's CPU
#: results were bit-identical across batches of 2 or more tokens and differed for single
#: tokens, whose kernels differ.)
NOISE_FLOOR_CONTEXT_BATCH = 64
NOISE_FLOOR_SCORED_BATCH = 1


@dataclass(frozen=True)
class Cure:
    """One way of answering ``[S, B, Q]`` from the cache warmed with ``[S, A, B]``."""

    name: str
    recompute_share: float = math.nan  # share of B recomputed (shift cures)

    @property
    def is_shift(self) -> bool:
        return self.name.startswith("shift")


def cures(recompute_shares: list[float]) -> list[Cure]:
    """The hit and the miss (the two ends), the shift, and shift + recompute r."""
    found = [Cure("hit"), Cure("miss"), Cure("shift", 0.0)]
    found += [Cure(f"shift_recompute_{r:g}", float(r)) for r in recompute_shares if r > 0]
    return found


def recompute_tokens(share: float, size_b: int) -> int:
    """Tokens of B a ``shift + recompute share`` cure recomputes: round(share·|B|)."""
    return 0 if math.isnan(share) else round(share * size_b)


@dataclass(frozen=True)
class Reference:
    """The exact answer: the next-token log-probabilities of a full recompute of
    ``[S, B, Q]`` over Q's positions and its own greedy continuation (ending with the
    end-of-generation token when the model stopped early)."""

    continuation: list[int]
    log_probs: np.ndarray
    next_tokens: np.ndarray


def _feed(engine: CacheSurgeryEngine, tokens: list[int], n_batch: int | None = None) -> None:
    """Evaluate ``tokens`` after what is cached, ``n_batch`` at a time (untimed)."""
    step = n_batch or engine.n_batch
    for start in range(0, len(tokens), step):
        chunk = tokens[start : start + step]
        call = engine.first_token([*engine.cached, *chunk])
        call.run()
        call.result()


def _scored(
    engine: CacheSurgeryEngine,
    context: list[int],
    scored: list[int],
    context_batch: int | None = None,
    scored_batch: int | None = None,
) -> np.ndarray:
    """From an empty cache: evaluate ``context``, then the log-probabilities after each
    token of ``scored``."""
    engine.clear()
    _feed(engine, context, context_batch)
    return engine.log_probs(scored, scored_batch)


def reference(engine: CacheSurgeryEngine, prompts: PromptSet, n_tokens: int) -> Reference:
    """The full recompute of the miss prompt and its greedy continuation (untimed)."""
    engine.clear()
    call = engine.generation(prompts.miss, n_tokens)
    call.run()
    result = call.result()
    continuation = [*result.tokens]
    if "stop_token" in result.extra:
        continuation.append(int(result.extra["stop_token"]))
    q = list(prompts.q.tokens)
    context = prompts.miss[: len(prompts.miss) - len(q)]
    logp = _scored(engine, context, q + continuation[:-1])
    next_tokens = np.array(q[1:] + continuation)
    engine.clear()
    return Reference(continuation, logp, next_tokens)


def noise_floor(engine: CacheSurgeryEngine, prompts: PromptSet, ref: Reference) -> quality.Quality:
    """A second full recompute, in batches of another size, against the reference."""
    q = list(prompts.q.tokens)
    context = prompts.miss[: len(prompts.miss) - len(q)]
    scored = q + ref.continuation[:-1]
    logp = _scored(engine, context, scored, NOISE_FLOOR_CONTEXT_BATCH, NOISE_FLOOR_SCORED_BATCH)
    engine.clear()
    return quality.compare(ref.log_probs, logp, ref.next_tokens, len(ref.continuation))


def _cure_quality(
    engine: CacheSurgeryEngine, prompts: PromptSet, ref: Reference
) -> quality.Quality:
    """The cure's distributions over Q and the reference continuation, from the cure's
    cache of ``[S, B]`` (Q's cells are dropped and Q evaluated again with every logit)."""
    q = list(prompts.q.tokens)
    engine.truncate(len(prompts.miss) - len(q))
    logp = engine.log_probs(q + ref.continuation[:-1])
    return quality.compare(ref.log_probs, logp, ref.next_tokens, len(ref.continuation))


def _prepare(engine: CacheSurgeryEngine, cure: Cure, prompts: PromptSet) -> tuple[Any, int]:
    """The cure's timed call, prepared, and the tokens it must evaluate."""
    if cure.name == "hit":
        return engine.first_token(prompts.hit), len(prompts.q.tokens)
    if cure.name == "miss":
        return engine.first_token(prompts.miss), len(prompts.miss) - len(prompts.s.tokens)
    k = recompute_tokens(cure.recompute_share, len(prompts.b.tokens))
    call = engine.shifted_first_token(prompts.miss, prompts.removed, recompute=k)
    return call, k + len(prompts.q.tokens)


def _check(
    measured: protocol.CallMeasurement,
    expected: int,
    restored: int,
    warm: int,
    pos_max: int,
    prompt: int,
) -> str:
    """Why a cure trial's counts contradict the design, or '' when they agree."""
    notes = []
    if restored != warm - 1:
        notes.append(f"the restored cache ends at position {restored}, expected {warm - 1}")
    if measured.eval_tokens != expected:
        notes.append(f"the call evaluated {measured.eval_tokens} tokens, expected {expected}")
    if measured.completion_tokens != 1:
        notes.append(f"the call sampled {measured.completion_tokens} tokens, expected 1")
    if pos_max != prompt - 1:
        notes.append(f"the cache ends at position {pos_max} after the call, expected {prompt - 1}")
    return "; ".join(notes)


def run_cures(
    engine: CacheSurgeryEngine,
    prompts: PromptSet,
    *,
    trials: int,
    warmup_tokens: int,
    settle_s: float,
    recompute_shares: list[float],
    quality_tokens: int,
    rows: list[dict[str, Any]] | None = None,
) -> pd.DataFrame:
    """Every cure, ``trials`` times each, from the same warmed cache; one row per trial and
    cure, plus one ``noise_floor`` row (trial 0) for the quality comparison itself. Rows
    are appended to ``rows`` as they are measured, so that a caller keeps them when the
    engine fails half-way."""
    rows = [] if rows is None else rows
    correction = engine.position_correction()
    ref = reference(engine, prompts, quality_tokens)
    floor = noise_floor(engine, prompts, ref)
    engine.clear()
    warm = engine.generation(prompts.warmup, warmup_tokens)
    warm.run()
    warm.result()
    snapshot = engine.snapshot()
    held = len(engine.cached)
    sizes = {
        "keep_tokens": len(prompts.s.tokens),
        "size_a": len(prompts.a.tokens),
        "size_b": len(prompts.b.tokens),
        "size_q": len(prompts.q.tokens),
        "position_correction": correction,
    }
    rows.append(
        {
            "trial": 0,
            "cure": "noise_floor",
            "order": 0,
            **sizes,
            "cache_verified": True,
            "cache_note": "",
            **floor.as_columns(),
        }
    )
    plan = cures(recompute_shares)
    for trial in range(1, trials + 1):
        # Rotate the order so that no cure always follows the same one.
        shift = (trial - 1) % len(plan)
        for order, cure in enumerate(plan[shift:] + plan[:shift], start=1):
            restored = engine.restore(snapshot)
            call, expected = _prepare(engine, cure, prompts)
            if order == 1:  # once per trial: its cures then run back to back, as requests do
                time.sleep(settle_s)
            measured = protocol.timed(call)
            prompt = prompts.hit if cure.name == "hit" else prompts.miss
            note = _check(measured, expected, restored, held, engine.pos_max(), len(prompt))
            found = (
                quality.NAN_QUALITY if cure.name == "hit" else _cure_quality(engine, prompts, ref)
            )
            rows.append(
                {
                    "trial": trial,
                    "cure": cure.name,
                    "order": order,
                    **sizes,
                    "recompute_share": cure.recompute_share,
                    "recompute_tokens": recompute_tokens(cure.recompute_share, sizes["size_b"]),
                    "tokens_expected": expected,
                    **measured.timing_columns(),
                    "restored_pos_max": restored,
                    "cache_verified": note == "",
                    "cache_note": note,
                    **found.as_columns(),
                }
            )
            log.info(
                "cure trial %d %-22s ttft=%.1f ms eval=%d kl_mean=%.4g top1=%.3f%s",
                trial,
                cure.name,
                measured.wall_ms,
                measured.eval_tokens,
                found.kl_mean,
                found.top1_agreement,
                f" UNVERIFIED: {note}" if note else "",
            )
    engine.clear()
    return pd.DataFrame(rows, columns=list(CURE_COLUMNS))
