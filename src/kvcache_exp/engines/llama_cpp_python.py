"""llama.cpp in-process, through llama-cpp-python's bindings: the seed's engine.

The calls the protocol times are made with llama.cpp's own C API (through
llama-cpp-python's bindings) rather than ``Llama.create_completion``, because the
high-level calls do more than the design asks inside the call: ``create_completion``
keeps generating past ``max_tokens`` while the text ends in an incomplete UTF-8
character (so a "1-token" TTFT could decode several tokens), and both it and
``generate`` fill llama.cpp's batch token by token in Python inside the call. Here a
call is laid out before the timer starts (:mod:`.llama_calls`) and the timed part is
exactly the engine's work.

The model and its context are created with the C API too, because the cures need what
``llama_cpp.Llama`` does not set: a context with two sequences sharing one unified KV
cache (``n_seq_max = 2``, ``kv_unified = true``). A batch of a sequence must start right
after that sequence's highest position, so recomputing tokens in the *middle* of the
cache (the head of B after a shift) is done in the second sequence, which shares the
cells before them (``llama_memory_seq_cp``), and the new cells are then given back to the
first. With one sequence in use the unified cache is the same cache as a one-sequence
context's: the seed's trials run as before.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from kvcache_exp.engines.base import Capability, EngineError, EngineSettings, offload_report
from kvcache_exp.engines.llama_calls import Batch, LlamaCall, Step
from kvcache_exp.engines.llama_state import sequence_positions
from kvcache_exp.engines.vocab import Tokenizer, captured_log, rope_correction
from kvcache_exp.prefix import common_prefix

#: KV cache element types by the names llama.cpp's tools use (``-ctk``/``-ctv``).
CACHE_TYPES = {
    "f32": llama_cpp.GGML_TYPE_F32,
    "f16": llama_cpp.GGML_TYPE_F16,
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
}

#: The sequence every prompt lives in, and the one a middle recompute borrows.
MAIN, SIDE = 0, 1
#: Where a shift cure recomputes part of B: its last tokens, or its first ones.
TAIL, HEAD = "tail", "head"

_backend_ready = False


def _backend() -> None:
    """llama.cpp's one-time backend initialisation (llama_cpp.Llama does it on first use)."""
    global _backend_ready
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


class LlamaCppPython:
    """The in-process engine: one model, one context, prompts in sequence 0."""

    name = "llama_cpp_python"
    #: Sequences of the context (the second one for recomputing in the middle of the cache).
    sequences = 2
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
        if not self.model_path.is_file():
            raise ValueError(f"Model path does not exist: {model_path}")
        _backend()
        log: list[str] = []
        self.model = self.ctx = None
        with captured_log(log):
            params = llama_cpp.llama_model_default_params()
            params.n_gpu_layers = settings.n_gpu_layers
            self.model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
            if self.model:
                self.ctx = llama_cpp.llama_init_from_model(self.model, self._context_params())
        self.load_log = "".join(log)
        if not self.model:
            raise ValueError(f"Failed to load model from file: {model_path}")
        if not self.ctx:
            self.close()
            raise EngineError(f"llama.cpp could not create a context: {self._log_tail()}")
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.tokenizer = Tokenizer(self.vocab)
        self.sampler = llama_cpp.llama_sampler_init_greedy()
        self.n_batch = settings.n_batch
        self.batches: list[Batch] = []
        self._one_tokens = (llama_cpp.llama_token * 1)()
        self.one = llama_cpp.llama_batch_get_one(self._one_tokens, 1)
        self.cached: list[int] = []
        # Whether the logits of the last cached position are still the context's output.
        self._logits_live = False

    def _context_params(self) -> Any:
        s = self.settings
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = s.n_ctx
        params.n_batch = params.n_ubatch = s.n_batch
        params.n_threads = params.n_threads_batch = s.n_threads
        params.n_seq_max = self.sequences
        params.kv_unified = True
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if s.flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.type_k, params.type_v = CACHE_TYPES[s.cache_type_k], CACHE_TYPES[s.cache_type_v]
        params.no_perf = False
        return params

    def _log_tail(self) -> str:
        return " / ".join(self.load_log.strip().splitlines()[-3:]) or "no reason given"

    # -- bookkeeping ------------------------------------------------------------------

    def set_cached(self, tokens: list[int]) -> None:
        """Record what sequence 0 of the cache holds (after a call)."""
        self.cached = tokens
        self._logits_live = bool(tokens)

    def pos_max(self, seq: int = MAIN) -> int:
        """The highest position a sequence holds in the cache (-1 when empty)."""
        return int(llama_cpp.llama_memory_seq_pos_max(self.mem, seq))

    def pos_min(self, seq: int = MAIN) -> int:
        """The lowest position a sequence holds in the cache (-1 when empty)."""
        return int(llama_cpp.llama_memory_seq_pos_min(self.mem, seq))

    def cache_positions(self, seq: int = MAIN) -> list[int] | None:
        """The position of every cell the sequence holds, read from llama.cpp's state
        (:mod:`.llama_state`; untimed), or None where that cannot be read."""
        return sequence_positions(self.ctx, seq)

    def _batch(self, index: int) -> Batch:
        while len(self.batches) <= index:
            handle = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
            self.batches.append(Batch(handle, self.n_batch))
        return self.batches[index]

    # -- the Engine interface ---------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.tokenize(text)

    def detokenize(self, tokens: list[int]) -> str:
        return self.tokenizer.detokenize(tokens)

    def clear(self) -> int:
        """Forget everything cached: the KV data of every sequence, and our record of it.

        This is the seed's ``llm.reset()`` plus ``kv_cache_clear()``: rewinding a token
        counter alone would leave the KV data in llama.cpp's memory. The returned highest
        position (-1 when the cache is empty) proves it.
        """
        llama_cpp.llama_memory_clear(self.mem, True)
        self.cached = []
        self._logits_live = False
        return self.pos_max()

    def _fill(
        self, tokens: Sequence[int], first_pos: int, first_batch: int = 0, **kw: Any
    ) -> list[Step]:
        """Lay ``tokens`` out in the engine's batches from ``first_pos``, starting at batch
        ``first_batch``; return the decode steps, in order."""
        steps: list[Step] = []
        for index, start in enumerate(range(0, len(tokens), self.n_batch), start=first_batch):
            self._batch(index).fill(tokens[start : start + self.n_batch], first_pos + start, **kw)
            steps.append(("decode", index))
        return steps

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

    def _prepare(self, tokens: list[int], max_tokens: int) -> LlamaCall:
        self._check_room(len(tokens), max_tokens)
        keep = common_prefix(self.cached, tokens)
        # The whole prompt cached with live logits: sample at once (as llama-cpp-python
        # does). Otherwise evaluate at least the last token, for its logits.
        sample_only = keep == len(tokens) == len(self.cached) and self._logits_live
        keep = min(keep, len(tokens) - 1)
        steps: list[Step] = [("rm", MAIN, keep, -1)]
        if not sample_only:
            steps += self._fill(tokens[keep:], keep)
        self._reset_counters()
        return LlamaCall(self, list(tokens), keep, max_tokens, steps, sample_only=sample_only)

    def first_token(self, tokens: list[int]) -> LlamaCall:
        """Evaluate the uncached part of ``tokens`` and sample exactly one token."""
        return self._prepare(tokens, 1)

    def generation(self, tokens: list[int], max_tokens: int) -> LlamaCall:
        """At most ``max_tokens`` greedy tokens after ``tokens``, stopping at EOS."""
        return self._prepare(tokens, max_tokens)

    # -- the shift cures --------------------------------------------------------------

    def shifted_first_token(
        self,
        tokens: list[int],
        removed: tuple[int, int],
        recompute: int = 0,
        where: str = TAIL,
    ) -> LlamaCall:
        """The shift cure: drop the cached cells of positions ``removed`` = [start, end),
        move the cells after them back by ``end - start`` (llama.cpp re-rotates their
        RoPE keys at the next decode), recompute ``recompute`` of the kept tokens, evaluate
        the new part of ``tokens`` and sample one token.

        ``where`` says which kept tokens are recomputed: :data:`TAIL`, the last ones
        before the new part (with it, in one batch); :data:`HEAD`, the first ones after
        ``start``, recomputed in sequence 1 from the cells before ``start`` (shared with
        it), whose new cells then replace sequence 0's. All of it happens inside the
        timed call, since it is the cure's cost. The cache must hold ``tokens[:start]``,
        then the removed part, then what ``tokens`` keeps.
        """
        if not llama_cpp.llama_memory_can_shift(self.mem):
            raise EngineError("this model's KV cache cannot be shifted (llama_memory_can_shift)")
        if where not in (TAIL, HEAD):
            raise EngineError(f"recompute where: {where!r} is not {TAIL!r} or {HEAD!r}")
        start, end = removed
        if not 0 <= start < end <= len(self.cached):
            raise EngineError(f"cannot remove positions [{start}, {end}) from {len(self.cached)}")
        self._check_room(len(tokens), 1)
        shifted = self.cached[:start] + self.cached[end:]
        kept = min(common_prefix(shifted, tokens), len(tokens) - 1)
        if kept - start < recompute:
            raise EngineError(f"cannot recompute {recompute} of the {kept - start} kept tokens")
        steps: list[Step] = [("rm", MAIN, start, end), ("add", MAIN, end, -1, start - end)]
        if where == HEAD and recompute:
            head = self._fill(tokens[start : start + recompute], start, seq=SIDE)
            steps.append(("cp", MAIN, SIDE, 0, start))
            steps += head
            steps += [
                ("rm", MAIN, start, start + recompute),
                ("cp", SIDE, MAIN, start, start + recompute),
                ("rm", SIDE, -1, -1),
                ("rm", MAIN, kept, -1),
            ]
            steps += self._fill(tokens[kept:], kept, first_batch=len(head))
        else:
            keep = kept - recompute
            steps.append(("rm", MAIN, keep, -1))
            steps += self._fill(tokens[keep:], keep)
        self._reset_counters()
        return LlamaCall(self, list(tokens), kept - recompute, 1, steps)

    # -- snapshots and teacher forcing (untimed helpers of the cures) ---------------

    def snapshot(self) -> tuple[ctypes.Array, int, list[int]]:
        """Sequence 0's cache state and what it holds, to restore it for another trial.

        The state stays in the ctypes buffer llama.cpp wrote it into: copying it out
        through Python's bytes costs seconds and a list of every byte on a large model.
        """
        size = llama_cpp.llama_state_seq_get_size(self.ctx, MAIN)
        buf = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self.ctx, buf, size, MAIN)
        return buf, written, list(self.cached)

    def restore(self, snapshot: tuple[ctypes.Array, int, list[int]]) -> int:
        """Put back a :meth:`snapshot` in an emptied cache; return its highest position."""
        buf, written, cached = snapshot
        self.clear()
        if llama_cpp.llama_state_seq_set_data(self.ctx, buf, written, MAIN) != written:
            raise EngineError("llama_state_seq_set_data could not restore the snapshot")
        self.set_cached(cached)
        self._logits_live = False
        return self.pos_max()

    def truncate(self, n_tokens: int) -> None:
        """Keep only the first ``n_tokens`` cached tokens."""
        llama_cpp.llama_memory_seq_rm(self.mem, MAIN, n_tokens, -1)
        self.set_cached(self.cached[:n_tokens])
        self._logits_live = False

    def log_probs(
        self, tokens: list[int], n_batch: int | None = None, scored: int | None = None
    ) -> np.ndarray:
        """Append ``tokens`` to the cache and return the log-probabilities of the next
        token after each of the last ``scored`` of them (all when None), teacher-forced:
        shape ``scored x n_vocab``. ``n_batch`` evaluates them in smaller batches."""
        self._check_room(len(self.cached) + len(tokens), 0)
        step = n_batch or self.n_batch
        scored = len(tokens) if scored is None else scored
        first_scored = len(tokens) - scored
        n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        rows = []
        first = len(self.cached)
        for start in range(0, len(tokens), step):
            chunk = tokens[start : start + step]
            from_here = max(first_scored - start, 0)
            self._batch(0).fill(chunk, first + start, logits_from=from_here)
            if llama_cpp.llama_decode(self.ctx, self._batch(0).handle) != 0:
                raise EngineError("llama_decode failed while scoring tokens")
            for i in range(from_here, len(chunk)):
                ptr = llama_cpp.llama_get_logits_ith(self.ctx, i)
                rows.append(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float64))
        self.set_cached([*self.cached, *tokens])
        logits = np.vstack(rows)
        shifted = logits - logits.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    def can_shift(self) -> bool:
        """Whether llama.cpp can shift this model's cache (it can for RoPE and for
        absolute position embeddings alike; only RoPE keys are corrected by it)."""
        return bool(llama_cpp.llama_memory_can_shift(self.mem))

    def position_correction(self) -> str:
        """What a shift corrects for this model (RoPE keys, or nothing)."""
        return rope_correction(self.model)

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
            "n_seq_max": self.sequences,
            "kv_unified": True,
            "flash_attn": self.settings.flash_attn,
            "cache_type_k": self.settings.cache_type_k,
            "cache_type_v": self.settings.cache_type_v,
        }

    def close(self) -> None:
        for batch in self.batches:
            llama_cpp.llama_batch_free(batch.handle)
        self.batches = []
        if getattr(self, "sampler", None) is not None:
            llama_cpp.llama_sampler_free(self.sampler)
            self.sampler = None
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None
