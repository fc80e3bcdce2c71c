"""The tiny llama models of :mod:`llama_tiny`, and the KV-cache shift facts they exist to show.

The cures for a cache miss ([A, B] cached, [B, Q] asked) remove A's cells and shift B's cells
down by |A| (RoPE re-rotation), optionally recomputing B's last k tokens. These tests pin what
that does in llama-cpp-python, on models that run in milliseconds:

* the maker: the GGUF loads, its byte-level BPE tokenizer round-trips English text and agrees
  with the reference tokenizer of :mod:`gpt2_tiny`, the next-token distributions are peaked,
  greedy generation does not stop at once, and the same arguments give the same bytes;
* one layer: a token's key and value depend only on the token and its (RoPE) position, so a
  shift followed by ``eval(Q)`` reproduces a full recompute of [B, Q] up to rounding;
* two layers: layer 1's keys and values of B attended to A, so a shift leaves them stale;
* GPT-2 (absolute positions): llama.cpp reports it can shift and shifts without complaint,
  but nothing is re-rotated, so even one layer differs;
* counters: the shift evaluates exactly |Q| tokens, shift + recompute exactly k + |Q|.

Tolerances, from measurements on this CPU build with F32 weights and the tokens below (logits
have a standard deviation of about 3 units per row, a max-min range of about 18):

* F32 KV cache: shift vs recompute, max |diff| of the logits over Q's positions measured
  8e-6 (removal from the middle 6e-6); merely splitting the same evaluation into other batch
  sizes moves logits by 3e-6 to 7e-6. Tolerance 1e-4.
* F16 KV cache (llama.cpp's default, what the experiment runs): measured 5.8e-3, because
  the re-rotated keys are rounded to F16 a second time. Tolerance 5e-2.
* Two layers: measured max |diff| 3.8 and mean KL 0.34 nats; asserted > 0.5 and > 0.05.
  A 1-layer GPT-2 shift: measured 4.1 and 0.07; asserted > 0.5 and > 0.01.
"""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from gpt2_tiny import CORPUS, bpe_encode, build_vocab, train_merges
from llama_tiny import make_tiny_gpt2_gguf, make_tiny_llama, tiny_tokenizer

N_A, N_B, N_Q = 64, 64, 16
N_S = 32  # a kept prefix before A
F32_KV = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32}

ENGLISH = [
    CORPUS,
    "Hello, world! The river ran past 3 old mills; it's quiet now.\nA new line, and tabs\t.",
    "  Leading spaces, trailing spaces   ",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per architecture the tests need (each is written in milliseconds)."""
    root = tmp_path_factory.mktemp("llama_tiny")
    return {
        "llama1": make_tiny_llama(root / "llama1.gguf", n_layer=1),
        "llama2": make_tiny_llama(root / "llama2.gguf", n_layer=2),
        "gpt2": make_tiny_gpt2_gguf(root / "gpt2.gguf", n_layer=1),
    }


def _load(path: Path, **kwargs: object) -> llama_cpp.Llama:
    """Logits at every position (``logits_all``) are what the cures are compared on."""
    params: dict[str, object] = {
        "n_ctx": 512,
        "n_threads": 1,
        "n_gpu_layers": 0,
        "seed": 42,
        "logits_all": True,
        "verbose": False,
    }
    params.update(kwargs)
    return llama_cpp.Llama(model_path=str(path), **params)  # type: ignore[arg-type]


def _segments(llm: llama_cpp.Llama) -> tuple[list[int], list[int], list[int], list[int]]:
    """S, A, B, Q: disjoint stretches of English tokens."""
    ids = llm.tokenize(CORPUS.encode("utf-8"), add_bos=False, special=False)
    assert len(ids) >= 300
    return ids[:N_S], ids[50 : 50 + N_A], ids[150 : 150 + N_B], ids[250 : 250 + N_Q]


def _clear(llm: llama_cpp.Llama) -> None:
    llm.reset()
    llm._ctx.kv_cache_clear()


def _memory(llm: llama_cpp.Llama) -> llama_cpp.llama_memory_t:
    return llama_cpp.llama_get_memory(llm.ctx)


def _pos_max(llm: llama_cpp.Llama) -> int:
    return int(llama_cpp.llama_memory_seq_pos_max(_memory(llm), 0))


def _remove_and_shift(llm: llama_cpp.Llama, start: int, length: int) -> None:
    """Drop cells [start, start+length) of sequence 0 and move the later ones down.

    llama-cpp-python's own bookkeeping (``input_ids``, ``n_tokens``) is rewritten to match, so
    that its next ``eval`` places new tokens right after the shifted ones.
    """
    memory = _memory(llm)
    assert llama_cpp.llama_memory_seq_rm(memory, 0, start, start + length)
    llama_cpp.llama_memory_seq_add(memory, 0, start + length, -1, -length)
    kept = [*llm.input_ids[:start], *llm.input_ids[start + length : llm.n_tokens]]
    llm.input_ids[: len(kept)] = kept
    llm.n_tokens = len(kept)


def _counted_eval(llm: llama_cpp.Llama, tokens: list[int]) -> int:
    """Evaluate ``tokens``; return how many tokens llama.cpp's counters say it evaluated."""
    llama_cpp.llama_synchronize(llm.ctx)
    llama_cpp.llama_perf_context_reset(llm.ctx)
    llm.eval(tokens)
    llama_cpp.llama_synchronize(llm.ctx)
    data = llama_cpp.llama_perf_context(llm.ctx)
    # a count with zero time means nothing ran (llama.cpp reports max(1, n))
    return (data.n_p_eval if data.t_p_eval_ms > 0 else 0) + (
        data.n_eval if data.t_eval_ms > 0 else 0
    )


def _rows(llm: llama_cpp.Llama, start: int, n: int) -> np.ndarray:
    return np.array(llm.scores[start : start + n], dtype=np.float64)


def _recompute(llm: llama_cpp.Llama, prefix: list[int], query: list[int]) -> np.ndarray:
    """Logits over ``query``'s positions from an empty cache: the reference."""
    _clear(llm)
    llm.eval(prefix + query)
    return _rows(llm, len(prefix), len(query))


def _shifted(
    llm: llama_cpp.Llama,
    kept: list[int],
    removed: list[int],
    tail: list[int],
    query: list[int],
) -> tuple[np.ndarray, int]:
    """Warm [kept, removed, tail], remove ``removed`` by a shift, eval ``query``.

    Returns the logits over ``query``'s positions and the number of tokens evaluated.
    """
    _clear(llm)
    llm.eval(kept + removed + tail)
    _remove_and_shift(llm, len(kept), len(removed))
    assert _pos_max(llm) == len(kept) + len(tail) - 1
    assert list(llm.input_ids[: llm.n_tokens]) == kept + tail
    n_eval = _counted_eval(llm, query)
    return _rows(llm, len(kept) + len(tail), len(query)), n_eval


def _kl(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    """KL(ref || other) per row, in nats."""

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(other)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def test_same_arguments_same_bytes(tmp_path: Path, models: dict[str, Path]) -> None:
    again = make_tiny_llama(tmp_path / "again.gguf", n_layer=1)
    assert again.read_bytes() == models["llama1"].read_bytes()
    other_seed = make_tiny_llama(tmp_path / "seed.gguf", n_layer=1, seed=7)
    assert other_seed.read_bytes() != again.read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_loads_with_its_shape(tmp_path: Path, dtype: str) -> None:
    path = make_tiny_llama(
        tmp_path / f"{dtype}.gguf", n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ctx=256
    )
    tokens, _, _, eot = tiny_tokenizer()
    llm = _load(path, n_ctx=128)
    try:
        assert llm.n_vocab() == len(tokens)
        assert llm.n_embd() == 64
        assert llm._model.n_ctx_train() == 256
        assert llm.token_eos() == llm.token_bos() == eot
        assert llama_cpp.llama_memory_can_shift(_memory(llm))
    finally:
        llm.close()


def test_tokenizer_round_trips_english(models: dict[str, Path]) -> None:
    merges = train_merges(CORPUS, 64)
    vocab = build_vocab(merges)
    llm = _load(models["llama1"])
    try:
        for text in ENGLISH:
            ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            assert llm.detokenize(ids).decode("utf-8") == text
            assert ids == bpe_encode(text, vocab, merges)
        # merged tokens are used, so this is BPE and not a byte fallback
        assert len(llm.tokenize(CORPUS.encode("utf-8"), add_bos=False)) < 0.6 * len(CORPUS)
    finally:
        llm.close()


def test_distributions_are_peaked_and_greedy_runs_on(models: dict[str, Path]) -> None:
    llm = _load(models["llama2"])
    try:
        _, _, b, q = _segments(llm)
        logits = _recompute(llm, b, q)
        assert np.all(logits.std(axis=1) > 1.5)  # about 3 units
        top = np.exp(logits.max(axis=1) - np.log(np.exp(logits).sum(axis=1)))
        assert top.mean() > 10 / llm.n_vocab()  # far from uniform
        _clear(llm)
        out = llm.create_completion(
            b + q, max_tokens=20, temperature=0.0, top_k=1, repeat_penalty=1.0
        )
        assert out["choices"][0]["finish_reason"] == "length"
        assert out["usage"]["completion_tokens"] == 20
    finally:
        llm.close()


@pytest.mark.parametrize(("kv", "tolerance"), [(F32_KV, 1e-4), ({}, 5e-2)], ids=["kv32", "kv16"])
def test_one_layer_shift_equals_recompute(
    models: dict[str, Path], kv: dict[str, int], tolerance: float
) -> None:
    llm = _load(models["llama1"], **kv)
    try:
        s, a, b, q = _segments(llm)
        reference = _recompute(llm, b, q)
        shifted, n_eval = _shifted(llm, [], a, b, q)
        assert n_eval == N_Q
        assert np.abs(shifted - reference).max() < tolerance
        assert np.array_equal(shifted.argmax(axis=1), reference.argmax(axis=1))

        # A removed from the middle: [S, A, B] -> [S, B]
        reference = _recompute(llm, s, b + q)[N_B:]
        shifted, n_eval = _shifted(llm, s, a, b, q)
        assert n_eval == N_Q
        assert np.abs(shifted - reference).max() < tolerance

        # the control: without any cure, A changes the logits by whole units
        assert np.abs(_recompute(llm, a + b, q) - _recompute(llm, b, q)).max() > 0.5
    finally:
        llm.close()


@pytest.mark.parametrize("model", ["llama2", "gpt2"])
def test_shift_does_not_repair_deeper_or_absolute_models(
    models: dict[str, Path], model: str
) -> None:
    llm = _load(models[model], **F32_KV)
    try:
        # GPT-2 has no RoPE, yet llama.cpp allows the shift: it moves positions silently
        assert llama_cpp.llama_memory_can_shift(_memory(llm))
        _, a, b, q = _segments(llm)
        reference = _recompute(llm, b, q)
        shifted, n_eval = _shifted(llm, [], a, b, q)
        assert n_eval == N_Q
        assert np.abs(shifted - reference).max() > 0.5
        assert _kl(reference, shifted).mean() > (0.05 if model == "llama2" else 0.01)
    finally:
        llm.close()


@pytest.mark.parametrize("r", [0.0, 0.25, 0.5, 1.0])
def test_shift_and_recompute_counts(models: dict[str, Path], r: float) -> None:
    llm = _load(models["llama2"], **F32_KV)
    try:
        _, a, b, q = _segments(llm)
        k = round(r * N_B)
        _clear(llm)
        llm.eval(a + b)
        assert _pos_max(llm) == N_A + N_B - 1
        _remove_and_shift(llm, 0, N_A)
        assert _pos_max(llm) == N_B - 1
        assert llama_cpp.llama_memory_seq_rm(_memory(llm), 0, N_B - k, -1)
        llm.n_tokens = N_B - k
        assert _pos_max(llm) == N_B - k - 1
        assert _counted_eval(llm, b[N_B - k :] + q) == k + N_Q
        assert _pos_max(llm) == N_B + N_Q - 1
        if k == N_B:  # everything recomputed in the same batch as the reference
            assert np.array_equal(_rows(llm, N_B, N_Q), _recompute(llm, b, q))
        _clear(llm)
        assert _pos_max(llm) == -1
    finally:
        llm.close()
