"""The trial protocol: the only timed code in the project.

Each trial follows the seed, for one condition's prompt::

    clear the cache                 # and prove it empty: its highest position is -1
    warm [A, B] with warmup_tokens generated tokens
    sleep settle_ms
    TTFT  = wall time of evaluating what is not cached and sampling exactly one token
    sleep settle_ms
    total = wall time of a generation of at most max_tokens tokens from the same prompt

Inside a timed region sits nothing but the engine's own work: each call is prepared by
the engine before the timer starts and read back after it stops (see
:mod:`kvcache_exp.engines.base`). The engine's counters, read after each call, say how
many tokens it really evaluated: that is what proves a hit reused the cache and a miss
did not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kvcache_exp.engines.base import CallResult, Engine, PreparedCall


@dataclass(frozen=True)
class CallMeasurement:
    """One timed engine call and what the engine says it did."""

    wall_ms: float
    result: CallResult

    @property
    def prefill_tokens(self) -> int:
        """Tokens the engine evaluated in multi-token batches."""
        return self.result.prefill_tokens

    @property
    def prefill_ms(self) -> float:
        return self.result.prefill_ms

    @property
    def decode_tokens(self) -> int:
        """Tokens the engine evaluated one at a time."""
        return self.result.decode_tokens

    @property
    def decode_ms(self) -> float:
        return self.result.decode_ms

    @property
    def eval_tokens(self) -> int:
        """Every token the call evaluated, in whichever kind of batch."""
        return self.result.eval_tokens

    @property
    def completion_tokens(self) -> int:
        """Tokens generated (sampled and returned), EOS not counted."""
        return len(self.result.tokens)

    @property
    def finish_reason(self) -> str:
        return self.result.finish_reason

    @property
    def overhead_ms(self) -> float:
        """Wall time not spent inside the engine's evaluation (sampling, Python, ctypes)."""
        return self.wall_ms - self.prefill_ms - self.decode_ms

    def timing_columns(self) -> dict[str, float | int]:
        """The cures CSV's timing columns: the TTFT and how the engine spent it."""
        return {
            "ttft_ms": self.wall_ms,
            "prefill_tokens": self.prefill_tokens,
            "prefill_ms": self.prefill_ms,
            "decode_tokens": self.decode_tokens,
            "decode_ms": self.decode_ms,
            "overhead_ms": self.overhead_ms,
        }


@dataclass(frozen=True)
class TrialMeasurement:
    """The three measured calls of one trial, and the cache's state after clearing."""

    cleared_pos_max: int | None  # None: the engine cannot see its cache's positions
    warmup: CallMeasurement
    ttft: CallMeasurement
    generation: CallMeasurement


def timed(call: PreparedCall) -> CallMeasurement:
    """Time the engine's work of one prepared call, and nothing else."""
    start = time.perf_counter()
    call.run()
    wall_ms = (time.perf_counter() - start) * 1000.0
    return CallMeasurement(wall_ms, call.result())


def run_trial(
    engine: Engine,
    warmup_prompt: list[int],
    prompt: list[int],
    *,
    warmup_tokens: int,
    max_tokens: int,
    settle_s: float,
) -> TrialMeasurement:
    """One trial of the seed's protocol for one condition's ``prompt``."""
    cleared = engine.clear()
    warmup = timed(engine.generation(warmup_prompt, warmup_tokens))
    time.sleep(settle_s)
    ttft = timed(engine.first_token(prompt))
    time.sleep(settle_s)
    generation = timed(engine.generation(prompt, max_tokens))
    return TrialMeasurement(cleared, warmup, ttft, generation)
