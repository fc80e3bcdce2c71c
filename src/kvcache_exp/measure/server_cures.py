"""The cures for a miss, measured through an inference server.

The in-process cures (:mod:`kvcache_exp.measure.cures`) operate on llama.cpp's cache
directly (snapshots, shifts with recomputation, every logit for teacher forcing). An HTTP
server offers none of that, but llama-server has the shift built in: its cache reuse
(``--cache-reuse N``, or ``n_cache_reuse: N`` in a request) finds cached chunks of at least
N tokens after the common prefix and moves them into place by KV shifting. That is the
server-side form of the shift cure, measured here as ``server_cache_reuse`` beside the two
ends, ``hit`` and ``miss``, into the same cures CSV (:data:`~kvcache_exp.columns.CURE_COLUMNS`).

Each trial clears the server's cache and warms ``[S, A, B]`` anew (untimed; a slot
restore from disk would cost as much at these sizes and adds a file format to trust),
then times one first-token call of the cure:

* ``hit``: ``[S, A, B, Q]``; must reuse |S|+|A|+|B| cached tokens and evaluate |Q|;
* ``miss``: ``[S, B, Q]`` with ``n_cache_reuse`` 0; must reuse |S| and evaluate |B|+|Q|;
* ``server_cache_reuse``: ``[S, B, Q]`` with ``n_cache_reuse`` = ``server.cache_reuse``;
  must reuse |S|+|B| (B shifted back by |A|) and evaluate |Q|.

The counts come from the server (``timings.cache_n``/``prompt_n``); anything else is
written as unverified. Quality is what a server can show: the first position where the
cure's greedy continuation leaves the reference continuation (a full recompute of
``[S, B, Q]`` through the same server, generated after clearing its cache). The
distribution figures (KL, top-1 agreement, RMS Δp) need every logit and stay NaN. The
``noise_floor`` row repeats the full recompute and compares it with the reference.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pandas as pd

from kvcache_exp.columns import CURE_COLUMNS
from kvcache_exp.engines.base import CacheReuseEngine, CallResult
from kvcache_exp.measure import protocol, quality
from kvcache_exp.measure.checks import check_server_cure
from kvcache_exp.measure.prompts import PromptSet

log = logging.getLogger(__name__)

SERVER_CACHE_REUSE = "server_cache_reuse"
#: The cures measured through a server, in their order in the first trial.
SERVER_CURES: tuple[str, ...] = ("hit", "miss", SERVER_CACHE_REUSE)

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


def _server_quality(reference: list[int], continuation: list[int]) -> quality.Quality:
    return quality.Quality(
        kl_mean=math.nan,
        kl_p99=math.nan,
        top1_agreement=math.nan,
        rms_dp=math.nan,
        first_divergence=first_divergence(reference, continuation),
        positions=len(reference),
    )


def run_server_cures(
    engine: CacheReuseEngine,
    prompts: PromptSet,
    *,
    trials: int,
    warmup_tokens: int,
    settle_s: float,
    quality_tokens: int,
    cache_reuse: int,
    correction: str,
    rows: list[dict[str, Any]] | None = None,
) -> pd.DataFrame:
    """The hit, the miss and llama-server's cache reuse, ``trials`` times each, plus one
    ``noise_floor`` row (trial 0). Rows are appended to ``rows`` as they are measured, so
    that a caller keeps them when the server fails half-way."""
    rows = [] if rows is None else rows
    s, a, b, q = (len(x.tokens) for x in (prompts.s, prompts.a, prompts.b, prompts.q))
    sizes = {
        "keep_tokens": s,
        "size_a": a,
        "size_b": b,
        "size_q": q,
        "position_correction": correction,
    }
    engine.clear()
    reference = _generate(engine, prompts.miss, quality_tokens, 0)
    engine.clear()
    again = _generate(engine, prompts.miss, quality_tokens, 0)
    rows.append(
        {
            "trial": 0,
            "cure": "noise_floor",
            "order": 0,
            **sizes,
            "cache_verified": True,
            "cache_note": "",
            **_server_quality(reference, again).as_columns(),
        }
    )
    design = {
        "hit": (prompts.hit, 0, q, s + a + b, math.nan),
        "miss": (prompts.miss, 0, b + q, s, math.nan),
        SERVER_CACHE_REUSE: (prompts.miss, cache_reuse, q, s + b, 0.0),
    }
    plan = list(SERVER_CURES)
    for trial in range(1, trials + 1):
        shift = (trial - 1) % len(plan)
        for order, cure in enumerate(plan[shift:] + plan[:shift], start=1):
            prompt, reuse, expected, cached, share = design[cure]
            cleared = engine.clear()
            warm = protocol.timed(engine.generation(prompts.warmup, warmup_tokens))
            time.sleep(settle_s)
            call = engine.first_token(prompt, n_cache_reuse=reuse)
            measured = protocol.timed(call)
            note = check_server_cure(
                measured, expected, cached, warm, len(prompts.warmup), len(prompt)
            )
            if cleared not in (None, -1):
                note = "; ".join(filter(None, [f"clearing left position {cleared}", note]))
            found = (
                quality.NAN_QUALITY
                if cure == "hit"
                else _server_quality(reference, _generate(engine, prompt, quality_tokens, reuse))
            )
            rows.append(
                {
                    "trial": trial,
                    "cure": cure,
                    "order": order,
                    **sizes,
                    "recompute_share": share,
                    "recompute_tokens": 0,
                    "tokens_expected": expected,
                    **measured.timing_columns(),
                    "restored_pos_max": (warm.result.cached_tokens or 0) + warm.eval_tokens - 1,
                    "cache_verified": note == "",
                    "cache_note": note,
                    **found.as_columns(),
                }
            )
            log.info(
                "server cure trial %d %-20s ttft=%.1f ms eval=%d cached=%s first_divergence=%d%s",
                trial,
                cure,
                measured.wall_ms,
                measured.eval_tokens,
                measured.result.cached_tokens,
                found.first_divergence,
                f" UNVERIFIED: {note}" if note else "",
            )
    engine.clear()
    return pd.DataFrame(rows, columns=list(CURE_COLUMNS))
