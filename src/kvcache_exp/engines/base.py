"""What every engine shares: the interface the trial protocol talks to, the settings an
engine is opened with, and the capabilities an engine declares.

The protocol (:mod:`kvcache_exp.measure.protocol`) times engine calls and nothing else.
So that nothing but the engine's own work sits inside a timed region, every call comes
in three steps: the engine *prepares* it (tokens laid out, request built, counters
reset), the protocol times :meth:`PreparedCall.run`, and the engine then reads what the
call did (:meth:`PreparedCall.result`: tokens generated, its own counters) outside the
timer.

What else an engine can do (cut its cache, reuse a shifted prefix on a server, say how
many tokens it reused) differs from engine to engine. Each declares it in
``capabilities`` (:class:`Capability`), and :mod:`kvcache_exp.measure` asks for those,
never for an engine's class: a new engine is one module plus one line in
:func:`kvcache_exp.engines.open_engine`.

Standard library only: importing this module loads no inference library.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol


class Capability(enum.Enum):
    """Something beyond the :class:`Engine` calls that an engine can do or tell."""

    #: llama.cpp's cache surgery in-process: snapshot and restore the cache, shift cached
    #: positions, truncate, and every logit for teacher forcing (the in-process cures).
    CACHE_SURGERY = "cache_surgery"
    #: llama-server's reuse of cached chunks by KV shifting (``n_cache_reuse`` in a
    #: request): the ``server_cache_reuse`` cure.
    SERVER_CACHE_REUSE = "server_cache_reuse"
    #: ``clear()`` empties the prompt cache (a server without a clearing request cannot).
    CACHE_CLEAR = "cache_clear"
    #: ``clear()`` returns the cache's highest position, which proves it empty.
    CACHE_POSITIONS = "cache_positions"
    #: Each call says how many prompt tokens it took from the cache.
    CACHED_COUNTS = "cached_counts"
    #: The server tokenizes (``/tokenize``); without it the client does, with the GGUF.
    SERVER_TOKENIZE = "server_tokenize"
    #: Prompts go to the engine as token ids (without it: as text the server tokenizes).
    TOKEN_PROMPTS = "token_prompts"
    #: llama-server renders chat messages with its own template (``/apply-template``,
    #: ``/v1/chat/completions``): the conversation replay's ``render: server``.
    SERVER_CHAT = "server_chat"


class EngineError(RuntimeError):
    """The engine failed or cannot do what the design needs; the message says why."""


@dataclass(frozen=True)
class EngineSettings:
    """What the engine is loaded with; every field that changes speed is recorded."""

    n_ctx: int
    n_batch: int
    n_threads: int
    n_gpu_layers: int
    seed: int
    flash_attn: bool = False
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"

    @classmethod
    def of(cls, settings: Any) -> EngineSettings:
        """The engine's part of an experiment's settings (same field names)."""
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})

    def server_args(self) -> dict[str, Any]:
        """The same settings for a llama-server, so that the two engines compare equal."""
        return {
            "threads": self.n_threads,
            "n_ctx": self.n_ctx,
            "n_batch": self.n_batch,
            "n_gpu_layers": self.n_gpu_layers,
            "flash_attn": self.flash_attn,
            "cache_type_k": self.cache_type_k,
            "cache_type_v": self.cache_type_v,
        }


@dataclass(frozen=True)
class CallResult:
    """What one engine call did, by the engine's own account.

    ``prefill_tokens``/``decode_tokens`` count the tokens the engine evaluated in
    multi-token batches and one at a time (-1: the engine did not say);
    ``cached_tokens`` is how many prompt tokens it reused from its cache, when it says
    so, else None.
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


class Engine(Protocol):
    """An inference engine as the trial protocol sees it."""

    name: str
    capabilities: frozenset[Capability]

    def tokenize(self, text: str) -> list[int]:
        """Tokens of ``text`` with the model's tokenizer, without BOS or special tokens."""

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

    def position_correction(self) -> str:
        """What a KV shift corrects for this model: ``rope``, ``none (absolute
        positions)``, or ``unknown (...)`` where the model file cannot be read."""

    def describe(self) -> dict[str, Any]:
        """The engine's build and settings, for the run's provenance."""

    def close(self) -> None:
        """Free the engine's resources."""


class CacheSurgeryEngine(Engine, Protocol):
    """An engine with :attr:`Capability.CACHE_SURGERY` (the in-process cures' needs)."""

    cached: list[int]
    n_batch: int

    def pos_max(self) -> int: ...

    def shifted_first_token(
        self, tokens: list[int], removed: tuple[int, int], recompute: int = 0
    ) -> PreparedCall: ...

    def snapshot(self) -> Any: ...

    def restore(self, snapshot: Any) -> int: ...

    def truncate(self, n_tokens: int) -> None: ...

    def log_probs(self, tokens: list[int], n_batch: int | None = None) -> Any: ...


class CacheReuseEngine(Engine, Protocol):
    """An engine with :attr:`Capability.SERVER_CACHE_REUSE`: its calls take the chunk
    size of llama-server's KV-shift reuse (0: none, a miss stays a miss)."""

    def first_token(self, tokens: list[int], n_cache_reuse: int = 0) -> PreparedCall: ...

    def generation(
        self, tokens: list[int], max_tokens: int, n_cache_reuse: int = 0
    ) -> PreparedCall: ...


def verification_gap(engine: Engine) -> str:
    """Why no trial of ``engine`` can be cache-verified, or '' when they can be.

    A trial is verified when something proves its cache empty after clearing (the
    cache's positions, or the warm-up's reused count of 0) and the engine's counts show
    which tokens each call reused. Known at open, so that a run stops (or warns) before
    its first trial rather than after all of them.
    """
    caps = engine.capabilities
    reasons = []
    if Capability.CACHE_CLEAR not in caps:
        reasons.append(
            f"the {engine.name} engine sends no request that clears the server's cache "
            "(server.cache_clear: none), so nothing makes a trial start cold"
        )
    if Capability.CACHE_POSITIONS not in caps and Capability.CACHED_COUNTS not in caps:
        reasons.append(
            f"the {engine.name} engine reports no cached-token counts (nor cache positions), "
            "so nothing shows which prompt tokens a call reused"
        )
    return "; ".join(reasons)


_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


def offload_report(log_text: str) -> dict[str, Any]:
    """Layers llama.cpp says it offloaded to a GPU, from its load log (in-process, or a
    llama-server's log)."""
    match = _OFFLOADED.search(log_text)
    return {
        "layers_offloaded": int(match.group(1)) if match else 0,
        "layers_total": int(match.group(2)) if match else None,
        "offload_log": match.group(0) if match else "no offload reported (CPU build or 0 layers)",
    }
