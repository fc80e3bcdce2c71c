"""The small interface between the trial protocol and an inference engine.

The protocol (:mod:`kvcache_exp.measure.protocol`) times engine calls and nothing else.
So that nothing but the engine's own work sits inside a timed region, every call comes
in three steps: the engine *prepares* it (tokens laid out, request built, counters
reset), the protocol times :meth:`PreparedCall.run`, and the engine then reads what the
call did (:meth:`PreparedCall.result`: tokens generated, its own counters) outside the
timer. Each engine is one module of this package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class CallResult:
    """What one engine call did, by the engine's own account.

    ``prefill_tokens``/``decode_tokens`` count the tokens the engine evaluated in
    multi-token batches and one at a time; ``cached_tokens`` is how many prompt tokens
    it reused from its cache, when it says so (a server), else None.
    """

    tokens: list[int]
    finish_reason: str
    prefill_tokens: int
    prefill_ms: float
    decode_tokens: int
    decode_ms: float
    cached_tokens: int | None = None
    engine_ms: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def eval_tokens(self) -> int:
        """Every token the call evaluated, in whichever kind of batch."""
        return self.prefill_tokens + self.decode_tokens


class PreparedCall(Protocol):
    """One engine call, ready to run: only :meth:`run` is timed."""

    def run(self) -> None:
        """Do the engine's work; the protocol times exactly this."""

    def result(self) -> CallResult:
        """What the call did; called after :meth:`run`, outside the timed region."""


class EngineError(RuntimeError):
    """The engine failed or cannot do what the design needs; the message says why."""


class Engine(Protocol):
    """An inference engine as the trial protocol sees it."""

    name: str

    def tokenize(self, text: str) -> list[int]:
        """Tokens of ``text`` with the engine's tokenizer, without BOS or special tokens."""

    def detokenize(self, tokens: list[int]) -> str:
        """The text of ``tokens`` (invalid UTF-8 replaced)."""

    def clear(self) -> int | None:
        """Empty the prompt cache; return the cache's highest position after (-1: empty),
        or None when the engine cannot see its cache (a server: the next call's reused
        token count is then the proof)."""

    def first_token(self, tokens: list[int]) -> PreparedCall:
        """Evaluate what of ``tokens`` is not cached and sample exactly one token."""

    def generation(self, tokens: list[int], max_tokens: int) -> PreparedCall:
        """Generate at most ``max_tokens`` tokens after ``tokens`` (stopping at EOS)."""

    def describe(self) -> dict[str, Any]:
        """The engine's build and settings, for the run's provenance."""

    def close(self) -> None:
        """Free the engine's resources."""
