"""The cures for a miss, measured through an inference server.

The in-process cures (:mod:`kvcache_exp.measure.cures`) operate on llama.cpp's cache
directly (snapshots, shifts with recomputation, every logit for teacher forcing). An HTTP
server offers none of that, but llama-server has the shift built in: its cache reuse
(``--cache-reuse N``, or ``n_cache_reuse: N`` in a request) finds cached chunks of at least
N tokens after the common prefix and moves them into place by KV shifting. That is the
server-side form of the shift cure, measured here as ``server_cache_reuse`` beside the two
ends, ``hit`` and ``miss``, into the same cures CSV (:data:`~kvcache_exp.columns.CURE_COLUMNS`).

They are measured at every kept prefix size S, trial t on prompt t, in a shuffled order
(:mod:`.cure_plan`). Each cure clears the server's cache and warms ``[S, A, B]`` anew
(untimed; a slot restore from disk would cost as much at these sizes and adds a file
format to trust), then times one first-token call:

* ``hit``: ``[S, A, B, Q]``; must reuse |S|+|A|+|B| cached tokens and evaluate |Q|;
* ``miss``: ``[S, B, Q]`` with ``n_cache_reuse`` 0; must reuse |S| and evaluate |B|+|Q|;
* ``server_cache_reuse``: ``[S, B, Q]`` with ``n_cache_reuse`` = ``server.cache_reuse``;
  must reuse |S|+|B| (B shifted back by |A|) and evaluate |Q|.

The counts come from the server (``timings.cache_n``/``prompt_n``); anything else is
written as unverified. Quality is what a server can show: the first position where the
cure's greedy continuation leaves the reference continuation (a full recompute of
``[S, B, Q]`` through the same server on the cures' own path: evaluated whole, then
generated). The
distribution figures (KL, top-1 agreement, RMS Δp) need every logit and stay empty. The
miss, the exact answer reached with S cached, is the noise floor of that comparison.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from kvcache_exp.engines.base import CacheReuseEngine, CallResult
from kvcache_exp.measure import protocol, quality
from kvcache_exp.measure.checks import check_server_cure
from kvcache_exp.measure.cure_plan import (
    HIT,
    MISS,
    Cure,
    PromptFactory,
    cure_columns,
    in_order,
    log_row,
    shuffled,
    sizes,
)
from kvcache_exp.measure.prompts import PromptSet

log = logging.getLogger(__name__)

SERVER_CACHE_REUSE = "server_cache_reuse"

#: Stands for the end-of-generation token in a continuation (its id is the server's).
_STOP = -1


def _continuation(result: CallResult) -> list[int]:
    """A generation's tokens, ending with :data:`_STOP` when the model stopped itself."""
    return [*result.tokens, *([_STOP] if result.finish_reason == "stop" else [])]


def first_divergence(reference: list[int], other: list[int]) -> int:
    """The first position where ``other`` leaves ``reference`` (``len(reference)`` when it
    never does). Up to that position both greedy continuations had the same context, so
    this equals the teacher-forced first divergence the in-process cures report."""
    for i, token in enumerate(reference):
        if i >= len(other) or other[i] != token:
            return i
    return len(reference)


def _generate(engine: CacheReuseEngine, prompt: list[int], n_tokens: int, reuse: int) -> list[int]:
    call = engine.generation(prompt, n_tokens, n_cache_reuse=reuse)
    call.run()
    return _continuation(call.result())


def _reference(engine: CacheReuseEngine, prompt: list[int], n_tokens: int) -> list[int]:
    """The exact answer's continuation, reached on the cures' own path: the whole prompt
    evaluated by a first-token call, then the generation, for which the server evaluates
    the prompt's last token again on its own (it needs its logits). A cure's continuation
    comes the same way after its timed call; generating straight after clearing would
    score the last token in a large batch instead, and on CPU llama.cpp's single-token
    batches are not bit-identical to larger ones, so even the miss would diverge."""
    engine.clear()
    engine.first_token(prompt, n_cache_reuse=0).run()
    return _generate(engine, prompt, n_tokens, 0)


def _server_quality(reference: list[int], continuation: list[int]) -> quality.Quality:
    """What a server can show of a cure's quality: where its greedy continuation first
    leaves the exact answer's (the distributions need every logit)."""
    return quality.Quality(
        kl_mean=math.nan,
        kl_p99=math.nan,
        kl_max=math.nan,
        top1_agreement=math.nan,
        rms_dp=math.nan,
        first_divergence=first_divergence(reference, continuation),
        positions=len(reference),
    )


def run_server_cures(
    engine: CacheReuseEngine,
    prompt_for: PromptFactory,
    *,
    keep_sizes: list[int],
    trials: int,
    warmup_tokens: int,
    settle_s: float,
    quality_tokens: int,
    cache_reuse: int,
    correction: str,
    seed: int,
    rows: list[dict[str, Any]],
) -> None:
    """The hit, the miss and llama-server's cache reuse at every kept prefix size,
    ``trials`` trials each (trial t on prompt t of ``prompt_for``, the cures in a
    shuffled order). Each cure clears the server's cache and warms ``[S, A, B]`` anew
    (untimed). Rows go into ``rows`` as they are measured, so that a caller keeps them
    when the server fails half-way."""
    cures = [Cure(HIT), Cure(MISS), Cure(SERVER_CACHE_REUSE, 0.0)]
    for keep in keep_sizes:
        for trial in range(1, trials + 1):
            prompts = _prompts(engine, prompt_for, trial - 1, keep, warmup_tokens)
            s, a, b, q = (len(x.tokens) for x in (prompts.s, prompts.a, prompts.b, prompts.q))
            reference = _reference(engine, prompts.miss, quality_tokens)
            shared = {"trial": trial, **sizes(prompts, correction)}
            design = {
                HIT: (prompts.hit, 0, q, s + a + b),
                MISS: (prompts.miss, 0, b + q, s),
                SERVER_CACHE_REUSE: (prompts.miss, cache_reuse, q, s + b),
            }
            for order, cure, before in in_order(shuffled(cures, seed, keep, trial)):
                prompt, reuse, expected, cached = design[cure.name]
                cleared = engine.clear()
                warm = protocol.timed(engine.generation(prompts.warmup, warmup_tokens))
                time.sleep(settle_s)
                measured = protocol.timed(engine.first_token(prompt, n_cache_reuse=reuse))
                note = check_server_cure(
                    measured, expected, cached, warm, len(prompts.warmup), len(prompt)
                )
                if cleared not in (None, -1):
                    note = "; ".join(filter(None, [f"clearing left position {cleared}", note]))
                found = (
                    quality.NAN_QUALITY
                    if cure.name == HIT
                    else _server_quality(
                        reference, _generate(engine, prompt, quality_tokens, reuse)
                    )
                )
                rows.append(
                    {
                        **shared,
                        **cure_columns(cure, b),
                        "order": order,
                        "predecessor": before,
                        "tokens_expected": expected,
                        **measured.timing_columns(),
                        "restored_pos_max": (warm.result.cached_tokens or 0) + warm.eval_tokens - 1,
                        "cache_verified": note == "",
                        "cache_note": note,
                        **found.as_columns(),
                    }
                )
                log_row(rows[-1], "server ")
    engine.clear()


def _prompts(
    engine: CacheReuseEngine,
    prompt_for: PromptFactory,
    variant: int,
    keep: int,
    warmup_tokens: int,
) -> PromptSet:
    """Trial ``variant``'s prompts at kept prefix ``keep``, Q chosen not to start with the
    token the server generates first after ``[S, A, B]`` (untimed)."""
    prompts = prompt_for(variant, keep, None)
    engine.clear()
    call = engine.generation(prompts.warmup, 1)
    call.run()
    following = call.result().tokens[:1]
    if following and prompts.q.tokens[0] == following[0]:
        return prompt_for(variant, keep, following[0])
    return prompts
