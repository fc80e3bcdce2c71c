"""The trial protocol: the only timed code in the project.

Each trial follows the seed exactly::

    clear_kv_cache(llm)          # reset the token counter AND clear the KV data
    warm [A, B] with warmup_tokens generated tokens
    sleep settle_ms
    TTFT  = wall time of a 1-token generation from the condition's prompt
    sleep settle_ms
    total = wall time of a max_tokens generation from the same prompt

Inside a timed region sits nothing but the measured llama-cpp-python call. llama.cpp's
own counters are reset before and read after each call, outside the timed region, so
that we know how many tokens each call really evaluated: that is what proves a hit
reused the cache and a miss did not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import llama_cpp

#: Sampling that makes every run the same: greedy, no penalties.
GREEDY: dict[str, Any] = {"temperature": 0.0, "top_k": 1, "repeat_penalty": 1.0}


@dataclass(frozen=True)
class CallMeasurement:
    """One timed call to ``create_completion`` and what llama.cpp says it did."""

    wall_ms: float
    prefill_tokens: int  # tokens llama.cpp evaluated in multi-token batches
    prefill_ms: float
    decode_tokens: int  # single-token evaluations
    decode_ms: float
    completion_tokens: int
    finish_reason: str
    text: str

    @property
    def eval_tokens(self) -> int:
        """Every token the call evaluated, in whichever kind of batch."""
        return self.prefill_tokens + self.decode_tokens

    @property
    def overhead_ms(self) -> float:
        """Wall time not spent inside llama.cpp's evaluation (Python, sampling, detokenize)."""
        return self.wall_ms - self.prefill_ms - self.decode_ms


@dataclass(frozen=True)
class TrialMeasurement:
    """The three measured calls of one trial."""

    warmup: CallMeasurement
    ttft: CallMeasurement
    generation: CallMeasurement


def clear_kv_cache(llm: llama_cpp.Llama) -> None:
    """Forget everything cached, as the seed does.

    ``reset()`` alone only rewinds llama-cpp-python's token counter; the KV data stays
    in llama.cpp's memory. ``kv_cache_clear()`` (``llama_memory_clear`` in the pinned
    version) removes it. Both are needed.
    """
    llm.reset()
    llm._ctx.kv_cache_clear()


def _counters(llm: llama_cpp.Llama) -> tuple[int, float, int, float]:
    """llama.cpp's counters since the last reset: (prefill n, ms, decode n, ms).

    llama.cpp reports a count of at least 1 even when nothing ran (``max(1, n)``), so a
    count whose time is exactly zero means nothing was evaluated.
    """
    llama_cpp.llama_synchronize(llm.ctx)
    data = llama_cpp.llama_perf_context(llm.ctx)
    n_p = data.n_p_eval if data.t_p_eval_ms > 0 else 0
    n_d = data.n_eval if data.t_eval_ms > 0 else 0
    return n_p, float(data.t_p_eval_ms), n_d, float(data.t_eval_ms)


def timed_completion(
    llm: llama_cpp.Llama, tokens: list[int], max_tokens: int, seed: int
) -> CallMeasurement:
    """Time one ``create_completion`` from ``tokens`` (a token list: no BOS is added)."""
    llama_cpp.llama_synchronize(llm.ctx)
    llama_cpp.llama_perf_context_reset(llm.ctx)
    start = time.perf_counter()
    out = llm.create_completion(tokens, max_tokens=max_tokens, seed=seed, **GREEDY)
    wall_ms = (time.perf_counter() - start) * 1000.0
    n_p, t_p, n_d, t_d = _counters(llm)
    choice = out["choices"][0]
    return CallMeasurement(
        wall_ms=wall_ms,
        prefill_tokens=n_p,
        prefill_ms=t_p,
        decode_tokens=n_d,
        decode_ms=t_d,
        completion_tokens=int(out["usage"]["completion_tokens"]),
        finish_reason=str(choice["finish_reason"]),
        text=str(choice["text"]),
    )


def run_trial(
    llm: llama_cpp.Llama,
    warmup_prompt: list[int],
    prompt: list[int],
    *,
    warmup_tokens: int,
    max_tokens: int,
    settle_s: float,
    seed: int,
) -> TrialMeasurement:
    """One trial of the seed's protocol for one condition's ``prompt``."""
    clear_kv_cache(llm)
    warmup = timed_completion(llm, warmup_prompt, warmup_tokens, seed)
    time.sleep(settle_s)
    ttft = timed_completion(llm, prompt, 1, seed)
    time.sleep(settle_s)
    generation = timed_completion(llm, prompt, max_tokens, seed)
    return TrialMeasurement(warmup=warmup, ttft=ttft, generation=generation)
