"""The in-process engine's prepared calls: exactly what runs inside a timed region.

A call is laid out before the timer starts (the tokens copied into llama.cpp batches, the
cache operations listed, llama.cpp's counters reset) so that :meth:`LlamaCall.run`, the
part the protocol times, does only the engine's own work: the cache operations in order,
the decodes, and greedy sampling, one token or up to ``max_tokens``. What the call did is
read afterwards (:meth:`LlamaCall.result`), from llama.cpp's counters.

The cache operations are llama.cpp's own (``llama_memory_seq_*``), each recorded with its
return value where it has one (removing cells), so that a cure row can prove that every
operation it claims took effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import llama_cpp

from kvcache_exp.engines.base import CallResult, EngineError


def counters(ctx: llama_cpp.llama_context_p) -> tuple[int, float, int, float]:
    """llama.cpp's counters since the last reset: (prefill n, ms, decode n, ms).

    They are updated only at ``llama_synchronize``. llama.cpp reports a count of at
    least 1 even when nothing ran (``max(1, n)``), so a count whose time is exactly zero
    means nothing was evaluated.
    """
    llama_cpp.llama_synchronize(ctx)
    data = llama_cpp.llama_perf_context(ctx)
    n_p = data.n_p_eval if data.t_p_eval_ms > 0 else 0
    n_d = data.n_eval if data.t_eval_ms > 0 else 0
    return n_p, float(data.t_p_eval_ms), n_d, float(data.t_eval_ms)


@dataclass
class Batch:
    """A llama.cpp batch allocated once and refilled for each call."""

    handle: llama_cpp.llama_batch
    capacity: int

    def fill(
        self,
        tokens: Sequence[int],
        first_pos: int,
        *,
        seq: int = 0,
        logits_from: int | None = None,
    ) -> None:
        """Lay ``tokens`` out at positions ``first_pos``.. of sequence ``seq``; logits for
        the tokens from index ``logits_from`` on (None: only the last one)."""
        b = self.handle
        b.n_tokens = len(tokens)
        start = len(tokens) - 1 if logits_from is None else logits_from
        for i, tok in enumerate(tokens):
            b.token[i] = tok
            b.pos[i] = first_pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = i >= start
        b.logits[len(tokens) - 1] = True


class _Context(Protocol):
    """What a call needs of the engine that prepared it: llama.cpp's handles, the batches
    it filled, and the record of what its cache holds."""

    ctx: Any
    mem: Any
    vocab: Any
    sampler: Any
    one: Any
    batches: list[Batch]

    def set_cached(self, tokens: list[int]) -> None: ...


#: One step of a call, in order: ("rm", seq, p0, p1) removes the cells of positions
#: [p0, p1) (p1 = -1: to the end; seq -1 with p0 = p1 = -1: a whole sequence);
#: ("add", seq, p0, p1, delta) shifts positions [p0, p1) by delta, which llama.cpp applies
#: at the next decode (re-rotating RoPE keys); ("cp", src, dst, p0, p1) gives the cells of
#: ``src`` in [p0, p1) to ``dst`` as well; ("decode", i) decodes the engine's batch i.
Step = tuple[Any, ...]


@dataclass
class LlamaCall:
    """One prepared call: its steps, then greedy sampling.

    ``keep`` is how many of ``tokens`` the cache held and reused; ``sample_only`` calls
    sample from logits still live from the previous call (the whole prompt was cached).
    """

    engine: _Context
    tokens: list[int]
    keep: int
    max_tokens: int
    steps: list[Step]
    sample_only: bool = False
    #: The return value of each cell removal, in order (llama.cpp's ``seq_rm`` refuses a
    #: partial removal it cannot do, e.g. in a recurrent model's state).
    removed: list[bool] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    finish_reason: str = ""
    stop_token: int | None = None

    def run(self) -> None:
        """The engine's work, and nothing else: the protocol times exactly this."""
        eng = self.engine
        ctx, mem = eng.ctx, eng.mem
        if not self.sample_only:
            for step in self.steps:
                kind = step[0]
                if kind == "decode":
                    if llama_cpp.llama_decode(ctx, eng.batches[step[1]].handle) != 0:
                        raise EngineError("llama_decode failed while evaluating the prompt")
                elif kind == "rm":
                    self.removed.append(
                        bool(llama_cpp.llama_memory_seq_rm(mem, step[1], step[2], step[3]))
                    )
                elif kind == "add":
                    llama_cpp.llama_memory_seq_add(mem, step[1], step[2], step[3], step[4])
                else:
                    llama_cpp.llama_memory_seq_cp(mem, step[1], step[2], step[3], step[4])
        sampler, vocab, one = eng.sampler, eng.vocab, eng.one
        out = self.generated
        token = llama_cpp.llama_sampler_sample(sampler, ctx, -1)
        while True:
            if self.max_tokens > 1 and llama_cpp.llama_vocab_is_eog(vocab, token):
                self.finish_reason = "stop"
                self.stop_token = token
                return
            out.append(token)
            if len(out) >= self.max_tokens:
                self.finish_reason = "length"
                return
            one.token[0] = token
            if llama_cpp.llama_decode(ctx, one) != 0:
                raise EngineError("llama_decode failed while generating")
            token = llama_cpp.llama_sampler_sample(sampler, ctx, -1)

    def result(self) -> CallResult:
        """What the call did, by llama.cpp's counters (read after the timer stopped)."""
        eng = self.engine
        n_p, t_p, n_d, t_d = counters(eng.ctx)
        decoded = len(self.generated) - (1 if self.finish_reason == "length" else 0)
        eng.set_cached([*self.tokens, *self.generated[:decoded]])
        extra: dict[str, Any] = {"cache_ops": [s[0] for s in self.steps if s[0] != "decode"]}
        extra["removals_done"] = all(self.removed)
        if self.stop_token is not None:
            extra["stop_token"] = self.stop_token
        return CallResult(
            tokens=list(self.generated),
            finish_reason=self.finish_reason,
            prefill_tokens=n_p,
            prefill_ms=t_p,
            decode_tokens=n_d,
            decode_ms=t_d,
            cached_tokens=self.keep if not self.sample_only else len(self.tokens),
            extra=extra,
        )
