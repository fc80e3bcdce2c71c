"""llama.cpp in-process, through llama-cpp-python: the seed's engine.

``llama_cpp.Llama`` loads the model, holds the context and tokenizes; the calls the
protocol times are made here with llama.cpp's own C API (through llama-cpp-python's
bindings), because the high-level calls do more than the design asks inside the call:

* ``create_completion`` keeps generating past ``max_tokens`` while the text ends in an
  incomplete UTF-8 character, so a "1-token" TTFT could decode several tokens;
* both it and ``generate`` fill llama.cpp's batch token by token in Python inside the
  call (about 2 µs a token), which is harness time, not engine time.

So a call here is prepared before the timer starts (the prefix shared with the cache
found, the batches filled, llama.cpp's counters reset), and the timed part is exactly
the engine's work: remove the cache cells past the shared prefix, decode the rest, and
sample one token (greedy); a generation then decodes and samples one token at a time,
at most ``max_tokens`` of them. llama-cpp-python's own bookkeeping (``input_ids``,
``n_tokens``) is kept equal to the cache so that the object stays usable.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from kvcache_exp.engines.base import (
    CallResult,
    Capability,
    EngineError,
    EngineSettings,
    offload_report,
)
from kvcache_exp.engines.vocab import captured_log, rope_correction

#: KV cache element types by the names llama.cpp's tools use (``-ctk``/``-ctv``).
CACHE_TYPES = {
    "f32": llama_cpp.GGML_TYPE_F32,
    "f16": llama_cpp.GGML_TYPE_F16,
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
}


def _counters(ctx: llama_cpp.llama_context_p) -> tuple[int, float, int, float]:
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
class _Batch:
    """A llama.cpp batch allocated once and refilled for each call."""

    handle: llama_cpp.llama_batch
    capacity: int

    def fill(self, tokens: Sequence[int], first_pos: int, all_logits: bool = False) -> None:
        b = self.handle
        b.n_tokens = len(tokens)
        for i, tok in enumerate(tokens):
            b.token[i] = tok
            b.pos[i] = first_pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = all_logits
        b.logits[len(tokens) - 1] = True


#: A cache operation done inside a timed call: ("rm", p0, p1) removes the cells of
#: positions [p0, p1) (p1 = -1: to the end); ("add", p0, p1, delta) shifts positions
#: [p0, p1) by delta, which llama.cpp applies (re-rotating RoPE keys) at the next decode.
CacheOp = tuple[Any, ...]


@dataclass
class _Call:
    """One prepared call: the cache operations, decode the batches, then sample.

    ``keep`` is how many prompt tokens the cache holds (after ``ops``) and reuses.
    """

    engine: LlamaCppPython
    tokens: list[int]
    keep: int
    n_batches: int
    max_tokens: int
    sample_only: bool
    ops: list[CacheOp] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    finish_reason: str = ""
    stop_token: int | None = None

    def run(self) -> None:
        eng = self.engine
        ctx = eng.ctx
        if not self.sample_only:
            for op in self.ops:
                if op[0] == "rm":
                    llama_cpp.llama_memory_seq_rm(eng.mem, 0, op[1], op[2])
                else:
                    llama_cpp.llama_memory_seq_add(eng.mem, 0, op[1], op[2], op[3])
            for batch in eng.batches[: self.n_batches]:
                if llama_cpp.llama_decode(ctx, batch.handle) != 0:
                    raise EngineError("llama_decode failed while evaluating the prompt")
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
        eng = self.engine
        n_p, t_p, n_d, t_d = _counters(eng.ctx)
        decoded = len(self.generated) - (1 if self.finish_reason == "length" else 0)
        eng._set_cached([*self.tokens, *self.generated[:decoded]])
        return CallResult(
            tokens=list(self.generated),
            finish_reason=self.finish_reason,
            prefill_tokens=n_p,
            prefill_ms=t_p,
            decode_tokens=n_d,
            decode_ms=t_d,
            cached_tokens=self.keep if not self.sample_only else len(self.tokens),
            extra={} if self.stop_token is None else {"stop_token": self.stop_token},
        )


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class LlamaCppPython:
    """The in-process engine: one model, one context, one sequence (id 0)."""

    name = "llama_cpp_python"
    capabilities = frozenset(
        {
            Capability.CACHE_SURGERY,
            Capability.CACHE_CLEAR,
            Capability.CACHE_POSITIONS,
            Capability.CACHED_COUNTS,
            Capability.TOKEN_PROMPTS,
        }
    )

    def __init__(self, model_path: Path, settings: EngineSettings) -> None:
        if settings.cache_type_k not in CACHE_TYPES or settings.cache_type_v not in CACHE_TYPES:
            raise EngineError(f"KV cache types must be among {sorted(CACHE_TYPES)}")
        self.settings = settings
        self.model_path = Path(model_path)
        log: list[str] = []
        with captured_log(log):
            self.llm = llama_cpp.Llama(
                model_path=str(model_path),
                n_ctx=settings.n_ctx,
                n_batch=settings.n_batch,
                n_ubatch=settings.n_batch,
                n_gpu_layers=settings.n_gpu_layers,
                n_threads=settings.n_threads,
                n_threads_batch=settings.n_threads,
                seed=settings.seed,
                flash_attn=settings.flash_attn,
                type_k=CACHE_TYPES[settings.cache_type_k],
                type_v=CACHE_TYPES[settings.cache_type_v],
                verbose=False,
            )
        self.load_log = "".join(log)
        self.ctx = self.llm.ctx
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.sampler = llama_cpp.llama_sampler_init_greedy()
        self.n_batch = settings.n_batch
        self.batches: list[_Batch] = []
        self._one_tokens = (llama_cpp.llama_token * 1)()
        self.one = llama_cpp.llama_batch_get_one(self._one_tokens, 1)
        self.cached: list[int] = []
        # Whether the logits of the last cached position are still the context's output.
        self._logits_live = False

    # -- bookkeeping ------------------------------------------------------------------

    def _set_cached(self, tokens: list[int]) -> None:
        """Record what the cache holds, in ours and in llama-cpp-python's bookkeeping."""
        self.cached = tokens
        self.llm.input_ids[: len(tokens)] = tokens
        self.llm.n_tokens = len(tokens)
        self._logits_live = bool(tokens)

    def pos_max(self) -> int:
        """The highest position held in the cache for the sequence (-1 when empty)."""
        return int(llama_cpp.llama_memory_seq_pos_max(self.mem, 0))

    def _batch(self, index: int) -> _Batch:
        while len(self.batches) <= index:
            handle = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
            self.batches.append(_Batch(handle, self.n_batch))
        return self.batches[index]

    # -- the Engine interface ---------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def detokenize(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="replace")

    def clear(self) -> int:
        """Forget everything cached: the token counter *and* the KV data.

        ``Llama.reset()`` alone only rewinds llama-cpp-python's counter; the KV data
        stays in llama.cpp's memory. ``llama_memory_clear`` removes it; the returned
        highest position (-1 when the cache is empty) proves it.
        """
        self.llm.reset()
        llama_cpp.llama_memory_clear(self.mem, True)
        self.cached = []
        self._logits_live = False
        return self.pos_max()

    def _fill(self, tokens: Sequence[int], first_pos: int, all_logits: bool = False) -> int:
        """Lay ``tokens`` out in the engine's batches from ``first_pos``; return how many."""
        n_batches = 0
        for n_batches, start in enumerate(range(0, len(tokens), self.n_batch), start=1):
            chunk = tokens[start : start + self.n_batch]
            self._batch(n_batches - 1).fill(chunk, first_pos + start, all_logits)
        return n_batches

    def _check_room(self, n_tokens: int, max_tokens: int) -> None:
        if n_tokens == 0:
            raise EngineError("an engine call needs at least one prompt token")
        if n_tokens + max_tokens > self.settings.n_ctx:
            raise EngineError(
                f"{n_tokens} prompt tokens + {max_tokens} generated exceed n_ctx="
                f"{self.settings.n_ctx}"
            )

    def _reset_counters(self) -> None:
        llama_cpp.llama_synchronize(self.ctx)
        llama_cpp.llama_perf_context_reset(self.ctx)

    def _prepare(self, tokens: list[int], max_tokens: int) -> _Call:
        self._check_room(len(tokens), max_tokens)
        keep = common_prefix(self.cached, tokens)
        # The whole prompt cached with live logits: sample at once (as llama-cpp-python
        # does). Otherwise evaluate at least the last token, for its logits.
        sample_only = keep == len(tokens) == len(self.cached) and self._logits_live
        keep = min(keep, len(tokens) - 1)
        n_batches = 0 if sample_only else self._fill(tokens[keep:], keep)
        self._reset_counters()
        ops: list[CacheOp] = [("rm", keep, -1)]
        return _Call(self, list(tokens), keep, n_batches, max_tokens, sample_only, ops)

    def shifted_first_token(
        self, tokens: list[int], removed: tuple[int, int], recompute: int = 0
    ) -> _Call:
        """The shift cure: drop the cached cells of positions ``removed`` = [start, end),
        move the cells after them back by ``end - start`` (llama.cpp re-rotates their
        RoPE keys at the next decode), drop the last ``recompute`` of the kept tokens
        before the new part of ``tokens``, evaluate the rest of ``tokens`` and sample one.

        All of it happens inside the timed call, since it is the cure's cost. The cache
        must hold ``tokens[:start]`` then the removed part, then what ``tokens`` keeps.
        """
        if not llama_cpp.llama_memory_can_shift(self.mem):
            raise EngineError("this model's KV cache cannot be shifted (llama_memory_can_shift)")
        start, end = removed
        if not 0 <= start < end <= len(self.cached):
            raise EngineError(f"cannot remove positions [{start}, {end}) from {len(self.cached)}")
        self._check_room(len(tokens), 1)
        shifted = self.cached[:start] + self.cached[end:]
        kept = min(common_prefix(shifted, tokens), len(tokens) - 1)
        keep = max(start, kept - recompute)
        if kept - keep != recompute:
            raise EngineError(f"cannot recompute {recompute} of the {kept - start} kept tokens")
        n_batches = self._fill(tokens[keep:], keep)
        self._reset_counters()
        ops: list[CacheOp] = [("rm", start, end), ("add", end, -1, start - end), ("rm", keep, -1)]
        return _Call(self, list(tokens), keep, n_batches, 1, False, ops)

    # -- snapshots and teacher forcing (untimed helpers of the cures) ---------------

    def snapshot(self) -> tuple[ctypes.Array, int, list[int]]:
        """The sequence's cache state and what it holds, to restore it for another trial.

        The state stays in the ctypes buffer llama.cpp wrote it into: copying it out
        through Python's bytes costs seconds and a list of every byte on a large model.
        """
        size = llama_cpp.llama_state_seq_get_size(self.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self.ctx, buf, size, 0)
        return buf, written, list(self.cached)

    def restore(self, snapshot: tuple[ctypes.Array, int, list[int]]) -> int:
        """Put back a :meth:`snapshot`; return the cache's highest position after."""
        buf, written, cached = snapshot
        self.clear()
        if llama_cpp.llama_state_seq_set_data(self.ctx, buf, written, 0) != written:
            raise EngineError("llama_state_seq_set_data could not restore the snapshot")
        self._set_cached(cached)
        self._logits_live = False
        return self.pos_max()

    def truncate(self, n_tokens: int) -> None:
        """Keep only the first ``n_tokens`` cached tokens."""
        llama_cpp.llama_memory_seq_rm(self.mem, 0, n_tokens, -1)
        self._set_cached(self.cached[:n_tokens])
        self._logits_live = False

    def log_probs(self, tokens: list[int], n_batch: int | None = None) -> np.ndarray:
        """Append ``tokens`` to the cache and return the log-probabilities of the next
        token after each of them (shape ``len(tokens) x n_vocab``), teacher-forced.

        ``n_batch`` evaluates them in smaller batches, for the noise floor: llama.cpp's
        results are not bit-identical across batch splits.
        """
        self._check_room(len(self.cached) + len(tokens), 0)
        step = n_batch or self.n_batch
        n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        rows = []
        first = len(self.cached)
        for start in range(0, len(tokens), step):
            chunk = tokens[start : start + step]
            self._batch(0).fill(chunk, first + start, all_logits=True)
            if llama_cpp.llama_decode(self.ctx, self._batch(0).handle) != 0:
                raise EngineError("llama_decode failed while scoring tokens")
            for i in range(len(chunk)):
                ptr = llama_cpp.llama_get_logits_ith(self.ctx, i)
                rows.append(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float64))
        self._set_cached([*self.cached, *tokens])
        logits = np.vstack(rows)
        shifted = logits - logits.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    def can_shift(self) -> bool:
        """Whether llama.cpp can shift this model's cache (it can for RoPE and for
        absolute position embeddings alike; only RoPE keys are corrected by it)."""
        return bool(llama_cpp.llama_memory_can_shift(self.mem))

    def position_correction(self) -> str:
        """What a shift corrects for this model (RoPE keys, or nothing)."""
        return rope_correction(self.llm.model)

    def first_token(self, tokens: list[int]) -> _Call:
        """Evaluate the uncached part of ``tokens`` and sample exactly one token."""
        return self._prepare(tokens, 1)

    def generation(self, tokens: list[int], max_tokens: int) -> _Call:
        """At most ``max_tokens`` greedy tokens after ``tokens``, stopping at EOS."""
        return self._prepare(tokens, max_tokens)

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "capabilities": sorted(c.value for c in self.capabilities),
            "llama_cpp_python": llama_cpp.__version__,
            "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
            "gpu_offload_supported": bool(llama_cpp.llama_supports_gpu_offload()),
            "n_gpu_layers_requested": self.settings.n_gpu_layers,
            **offload_report(self.load_log),
            "n_threads": self.settings.n_threads,
            "n_batch": self.settings.n_batch,
            "n_ctx": self.settings.n_ctx,
            "flash_attn": self.settings.flash_attn,
            "cache_type_k": self.settings.cache_type_k,
            "cache_type_v": self.settings.cache_type_v,
        }

    def close(self) -> None:
        for batch in self.batches:
            llama_cpp.llama_batch_free(batch.handle)
        self.batches = []
        if self.sampler is not None:
            llama_cpp.llama_sampler_free(self.sampler)
            self.sampler = None
        self.llm.close()
