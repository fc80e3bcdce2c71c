"""Tiny llama-architecture GGUF models (RoPE) for testing KV-cache shifts.

A KV-cache "shift" removes cells from the cache and re-rotates the keys of the cells after
them (RoPE), so that a prompt [B, Q] can reuse the keys and values computed for [A, B]. What a
shift can and cannot repair is a property of the architecture, and it can be tested exactly
only on a model small enough to run in milliseconds, with F32 weights:

* with one layer, a token's key and value depend only on the token and its position, so a
  shift reproduces a full recompute of [B, Q] up to rounding;
* with two or more layers, layer 1's keys and values of B were computed while attending to A,
  so a shift leaves them stale and the result measurably differs;
* GPT-2 (absolute position embeddings, :mod:`gpt2_tiny`) has nothing a shift can re-rotate.

The models are written here with the ``gguf`` library from numpy random weights (fixed seed),
using the byte-level BPE vocabulary of :mod:`gpt2_tiny` (GPT-2's 256 byte tokens, a few dozen
merges learned from its English ``CORPUS``, ``<|endoftext|>`` last), so that llama.cpp loads
them with a working tokenizer for ordinary English text. Same arguments, same bytes.

This is a helper module, not a test file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gpt2_tiny import CORPUS, build_vocab, make_tiny_checkpoint, train_merges

from kvcache_exp.models.gpt2 import (
    END_OF_TEXT,
    add_byte_bpe_tokenizer,
    convert_gpt2_to_gguf,
    write_gguf,
)

__all__ = [
    "CORPUS",
    "DTYPES",
    "make_tiny_gpt2_gguf",
    "make_tiny_llama",
    "tiny_tokenizer",
]

#: Weight precisions; ``f32`` keeps llama.cpp's results as exact as it allows.
DTYPES: tuple[str, ...] = ("f32", "f16", "q8_0")


def tiny_tokenizer(n_merges: int = 64) -> tuple[list[str], list[int], list[str], int]:
    """Tokens, token types, merges (``"a b"`` strings) and the end-of-text id.

    The vocabulary is :func:`gpt2_tiny.build_vocab` over merges learned from ``CORPUS``: every
    byte has a token, so any text tokenizes, and common English pieces get merged tokens.
    """
    merges = train_merges(CORPUS, n_merges)
    vocab = build_vocab(merges)
    tokens = [""] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    eot = vocab[END_OF_TEXT]
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    types[eot] = int(gguf.TokenType.CONTROL)
    return tokens, types, [f"{a} {b}" for a, b in merges], eot


def _encode(name: str, array: np.ndarray, dtype: str) -> tuple[np.ndarray, Any]:
    """(data, raw ggml type or None); 1-D tensors (norms) stay F32 as llama.cpp's converter does."""
    data = np.ascontiguousarray(array, dtype=np.float32)
    if data.ndim == 1 or dtype == "f32":
        return data, None
    if dtype == "f16":
        return data.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(data, qtype), qtype


def make_tiny_llama(
    path: Path,
    *,
    seed: int = 1234,
    n_layer: int = 1,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int | None = None,
    n_ff: int = 128,
    n_ctx: int = 1024,
    n_merges: int = 64,
    dtype: str = "f32",
    logit_scale: float = 3.0,
    rope_freq_base: float = 10000.0,
) -> Path:
    """Write a random-weight llama (RMSNorm, RoPE, SwiGLU, untied output) GGUF to ``path``.

    Scales are chosen so that the model behaves like a language model as far as the cache
    experiments care:

    * attention is far from uniform (query-key scores with a standard deviation of about 2),
      so a stale or mis-rotated key changes the output by much more than rounding;
    * the final logits have a standard deviation of about ``logit_scale`` units, so the
      next-token distributions are peaked (KL divergences and top-1 agreement are informative)
      instead of flat;
    * the end-of-text row of the output matrix is zero (logit exactly 0 while the others
      spread over several units), so greedy generation essentially never stops at once.

    Args:
        path: The GGUF to write (parent directories are created). Written to ``<path>.tmp``
            and renamed, so a failed write never leaves a truncated model.
        seed: numpy seed of every weight; same arguments, same bytes.
        n_layer: 1 makes a shift exact up to rounding; 2+ makes it stale.
        n_embd, n_head, n_head_kv, n_ff: Dimensions (``n_head_kv`` < ``n_head`` is GQA;
            defaults to ``n_head``).
        n_ctx: The trained context length written to the file.
        n_merges: BPE merges learned from ``CORPUS`` (vocabulary = 256 + merges + 1).
        dtype: ``f32`` (exact weights), ``f16`` or ``q8_0`` for the 2-D weights.
        logit_scale: Standard deviation of the output logits.
        rope_freq_base: RoPE theta.

    Returns:
        ``path``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    n_head_kv = n_head if n_head_kv is None else n_head_kv
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError(f"n_embd {n_embd}, n_head {n_head}, n_head_kv {n_head_kv} do not divide")
    head_dim = n_embd // n_head
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head size, got {head_dim}")

    tokens, token_types, merges, eot = tiny_tokenizer(n_merges)
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def normal(scale: float, *shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    # Every matrix multiplies an RMS-normalised (RMS ~1) vector of n_embd (or n_ff) entries,
    # so a scale of c / sqrt(fan_in) gives outputs of RMS ~c.
    # q and k entries of RMS 1.5 give scores q.k / sqrt(head_dim) of standard deviation ~2.
    fan = n_embd**-0.5
    tensors: list[tuple[str, np.ndarray]] = [("token_embd.weight", normal(1.0, n_vocab, n_embd))]
    for layer in range(n_layer):
        blk = f"blk.{layer}."
        tensors += [
            (blk + "attn_norm.weight", 1.0 + normal(0.1, n_embd)),
            (blk + "attn_q.weight", normal(1.5 * fan, n_head * head_dim, n_embd)),
            (blk + "attn_k.weight", normal(1.5 * fan, n_head_kv * head_dim, n_embd)),
            (blk + "attn_v.weight", normal(fan, n_head_kv * head_dim, n_embd)),
            (blk + "attn_output.weight", normal(fan, n_embd, n_embd)),
            (blk + "ffn_norm.weight", 1.0 + normal(0.1, n_embd)),
            (blk + "ffn_gate.weight", normal(fan, n_ff, n_embd)),
            (blk + "ffn_up.weight", normal(fan, n_ff, n_embd)),
            (blk + "ffn_down.weight", normal(n_ff**-0.5, n_embd, n_ff)),
        ]
    output = normal(logit_scale * fan, n_vocab, n_embd)
    output[eot] = 0.0
    tensors += [
        ("output_norm.weight", 1.0 + normal(0.1, n_embd)),
        ("output.weight", output),
    ]

    def describe(writer: Any) -> None:
        writer.add_name(f"tiny-llama-{n_layer}l-{dtype}")
        writer.add_context_length(n_ctx)
        writer.add_embedding_length(n_embd)
        writer.add_feed_forward_length(n_ff)
        writer.add_block_count(n_layer)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(rope_freq_base)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(n_vocab)
        # The same tokenizer as the package's GPT-2 converter writes.
        add_byte_bpe_tokenizer(writer, tokens, token_types, merges, eot, eot)

    write_gguf(
        Path(path), "llama", dtype, describe, ((n, *_encode(n, a, dtype)) for n, a in tensors)
    )
    return path


def make_tiny_gpt2_gguf(
    path: Path, *, n_positions: int = 1024, dtype: str = "f32", **checkpoint_kwargs: Any
) -> Path:
    """The GPT-2 counterpart (absolute position embeddings) as a GGUF at ``path``.

    Made by :func:`gpt2_tiny.make_tiny_checkpoint` and the package's own converter, with the
    same vocabulary as :func:`make_tiny_llama`. ``checkpoint_kwargs`` go to the checkpoint
    maker (``seed``, ``n_layer``, ``n_embd``, ``n_head``, ...).
    """
    path = Path(path)
    checkpoint = make_tiny_checkpoint(
        path.with_name(path.name + ".checkpoint"), n_positions=n_positions, **checkpoint_kwargs
    )
    return convert_gpt2_to_gguf(checkpoint, path, dtype, name="tiny-gpt2")
