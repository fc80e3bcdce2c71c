"""GPT-2 download + conversion, proved on a tiny GPT-2 served from 127.0.0.1.

The real code path runs end to end: ``build_gpt2_gguf`` fetches a Hugging Face layout over
HTTP (``fetch_hf_checkpoint``), verifies pinned sha256s and converts with the ``gguf`` library;
llama-cpp-python then loads the result. Then:

* logits: llama.cpp's next-token logits equal a GPT-2 forward pass written here in numpy over
  the same safetensors, at every position of several prompts. This is what catches a missing
  transpose or a misplaced bias, which load without error and give wrong numbers;
* tokenizer: llama.cpp's tokenization equals a reference byte-level BPE (GPT-2 regex, merges
  by rank) over the same vocab.json and merges.txt;
* EOS: BOS and EOS are the end-of-text id (llama.cpp would default them to 11), and a model
  whose end-of-text logit dominates stops at once with ``finish_reason == "stop"``;
* F16 and Q8_0 load and stay close to F32.

Tolerances (stated, with the measurement behind them). Let ``scale`` be the largest absolute
reference logit of a prompt (12-26 for these weights). Measured over four weight seeds and
the prompts below (CPU build):

* F32 vs numpy (float64): ``max |diff| <= 2e-3 * scale``. The GGUF holds the exact F32
  weights; what remains is llama.cpp's own rounding: the KV cache is F16 by default (as in the
  experiment) and ggml's GELU uses an F16 lookup table. Measured: at most 4e-4 * scale. A
  transposed ``attn_output`` gives errors of the order of ``scale`` itself (tested below).
* F16 vs F32 GGUF: ``5e-3 * scale`` (measured at most 1.1e-3 * scale).
* Q8_0 vs F32 GGUF: ``5e-2 * scale`` (measured at most 2e-2 * scale; 8-bit weights).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import llama_cpp
import numpy as np
import pytest
from gpt2_tiny import (
    CORPUS,
    bpe_encode,
    load_tiny_tokenizer,
    make_tiny_checkpoint,
    publish_hf_layout,
    serve_directory,
    sha256_of,
)
from safetensors.numpy import load_file

import kvcache_exp.models.gpt2 as gpt2_module
from kvcache_exp.models.download import ChecksumMismatchError
from kvcache_exp.models.gpt2 import (
    END_OF_TEXT,
    build_gpt2_gguf,
    checkpoint_cache_dir,
    convert_gpt2_to_gguf,
)

REPO = "tiny-org/gpt2-tiny"
EOS_REPO = "tiny-org/gpt2-tiny-eos"
REVISION = "0123456789abcdef0123456789abcdef01234567"
N_CTX = 256
FAST = {"retries": 1, "timeout": 10.0, "backoff": 0.01}

F32_RTOL = 2e-3
F16_RTOL = 5e-3
Q8_0_RTOL = 5e-2

TOKENIZER_STRINGS = [
    "The cache holds the keys and the values.",
    "It's what we'll see: they're here, I'm sure, you've done it, he'd go.",
    "  leading spaces, trailing spaces   ",
    "line one\nline two\n\n\tindented\r\nwindows",
    "numbers 12345 and 3.14159, x=42!",
    "The seed saw 28 ms (+434%), then 1281 ms (28 ms).",
    "Ünïcödé café, naïve 日本語 and emoji 🙂🚀",
    "symbols: <|endoftext|> {} [] () #@$%^&*",
    "",
]


def _source(repo: str, pins: dict[str, str], dtype: str = "f32") -> dict[str, Any]:
    return {
        "kind": "huggingface_gpt2",
        "repo": repo,
        "revision": REVISION,
        "dtype": dtype,
        "files": dict(pins),
    }


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two tiny checkpoints published in the hub's URL layout and served on 127.0.0.1."""
    work = tmp_path_factory.mktemp("hub")
    checkpoint = make_tiny_checkpoint(work / "src" / "tiny", n_positions=N_CTX)
    eos_checkpoint = make_tiny_checkpoint(
        work / "src" / "tiny-eos", n_positions=N_CTX, eos_dominant=True
    )
    root = work / "www"
    pins = publish_hf_layout(root, REPO, REVISION, checkpoint)
    eos_pins = publish_hf_layout(root, EOS_REPO, REVISION, eos_checkpoint)
    with serve_directory(root) as base_url:
        yield {
            "base_url": base_url,
            "pins": pins,
            "eos_pins": eos_pins,
            "checkpoint": checkpoint,
            "eos_checkpoint": eos_checkpoint,
            "cache": work / "cache",
            "out": work / "gguf",
        }


@pytest.fixture(scope="module")
def built(hub: dict[str, Any]) -> dict[str, Path]:
    """GGUFs made by the function the workflow calls, one per dtype, plus the EOS model."""
    paths: dict[str, Path] = {}
    for dtype in ("f32", "f16", "q8_0"):
        paths[dtype] = build_gpt2_gguf(
            _source(REPO, hub["pins"], dtype),
            hub["out"] / f"tiny-{dtype}.gguf",
            base_url=hub["base_url"],
            cache_dir=hub["cache"],
            **FAST,
        )
    paths["eos"] = build_gpt2_gguf(
        _source(EOS_REPO, hub["eos_pins"]),
        hub["out"] / "tiny-eos-f32.gguf",
        base_url=hub["base_url"],
        cache_dir=hub["cache"],
        **FAST,
    )
    return paths


def _load(path: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=N_CTX,
        logits_all=True,
        verbose=False,
        n_threads=2,
        n_gpu_layers=0,
    )


@pytest.fixture(scope="module")
def models(built: dict[str, Path]) -> Iterator[dict[str, llama_cpp.Llama]]:
    loaded = {key: _load(path) for key, path in built.items()}
    yield loaded
    for llm in loaded.values():
        llm.close()


def llama_logits(llm: llama_cpp.Llama, tokens: list[int]) -> np.ndarray:
    """Logits llama.cpp computes at every position of ``tokens`` (fresh KV cache)."""
    llm.reset()
    llm._ctx.kv_cache_clear()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float64)


def reference_logits(checkpoint: Path, tokens: list[int]) -> np.ndarray:
    """GPT-2's forward pass in float64 numpy, straight from the Hugging Face checkpoint.

    Written from the GPT-2 definition (pre-norm blocks, Conv1D ``x @ W + b`` with ``W`` shaped
    (in, out), causal softmax attention, tanh GELU, tied output embedding), not from the
    converter, so that it checks the converter rather than repeating it.
    """
    config = json.loads((checkpoint / "config.json").read_text())
    weights = {
        name.removeprefix("transformer."): array.astype(np.float64)
        for name, array in load_file(str(checkpoint / "model.safetensors")).items()
    }
    n_head, eps = config["n_head"], config["layer_norm_epsilon"]

    def layer_norm(x: np.ndarray, prefix: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * weights[prefix + ".weight"] + weights[
            prefix + ".bias"
        ]

    def gelu_new(x: np.ndarray) -> np.ndarray:
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))

    def conv1d(x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ weights[prefix + ".weight"] + weights[prefix + ".bias"]

    n = len(tokens)
    x = weights["wte.weight"][tokens] + weights["wpe.weight"][:n]
    causal = np.tril(np.ones((n, n), dtype=bool))
    for layer in range(config["n_layer"]):
        p = f"h.{layer}"
        q, k, v = np.split(conv1d(layer_norm(x, p + ".ln_1"), p + ".attn.c_attn"), 3, axis=-1)
        d = q.shape[-1] // n_head
        q, k, v = (t.reshape(n, n_head, d).transpose(1, 0, 2) for t in (q, k, v))
        scores = np.where(causal, q @ k.transpose(0, 2, 1) / np.sqrt(d), -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attended = (probs @ v).transpose(1, 0, 2).reshape(n, n_head * d)
        x = x + conv1d(attended, p + ".attn.c_proj")
        hidden = gelu_new(conv1d(layer_norm(x, p + ".ln_2"), p + ".mlp.c_fc"))
        x = x + conv1d(hidden, p + ".mlp.c_proj")
    head = weights.get("lm_head.weight", weights["wte.weight"])
    return layer_norm(x, "ln_f") @ head.T


def _prompts(checkpoint: Path) -> dict[str, list[int]]:
    vocab, merges = load_tiny_tokenizer(checkpoint)
    return {
        "one-token": [vocab["Ġthe"]] if "Ġthe" in vocab else [42],
        "sentence": bpe_encode("The cache holds the keys and the values.", vocab, merges),
        "corpus": bpe_encode(CORPUS, vocab, merges)[:200],
        "with-eot": bpe_encode("first part", vocab, merges)
        + [vocab[END_OF_TEXT]]
        + bpe_encode(" second part", vocab, merges),
    }


# (a) the real fetch + convert path ---------------------------------------------------------


def test_build_fetches_pinned_files_into_the_cache(hub: dict[str, Any], built: dict) -> None:
    cached = checkpoint_cache_dir(hub["cache"], REPO, REVISION)
    assert cached == hub["cache"] / "tiny-org--gpt2-tiny" / REVISION
    for name, sha in hub["pins"].items():
        assert sha256_of(cached / name) == sha
    assert sorted(p.name for p in hub["out"].iterdir()) == sorted(
        ["tiny-f32.gguf", "tiny-f16.gguf", "tiny-q8_0.gguf", "tiny-eos-f32.gguf"]
    )  # no .tmp left behind


def test_cached_checkpoint_is_not_downloaded_again(
    hub: dict[str, Any], built: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kvcache_exp"):
        build_gpt2_gguf(
            _source(REPO, hub["pins"]),
            tmp_path / "again.gguf",
            base_url=hub["base_url"],
            cache_dir=hub["cache"],
            **FAST,
        )
    messages = [r.getMessage() for r in caplog.records]
    assert sum("already present with the pinned sha256" in m for m in messages) == len(hub["pins"])
    assert not any(m.startswith("Downloading ") for m in messages)
    assert sha256_of(tmp_path / "again.gguf") == sha256_of(built["f32"])


def test_conversion_is_deterministic(hub: dict[str, Any], built: dict, tmp_path: Path) -> None:
    cached = checkpoint_cache_dir(hub["cache"], REPO, REVISION)
    for dtype in ("f32", "q8_0"):
        again = convert_gpt2_to_gguf(cached, tmp_path / f"{dtype}.gguf", dtype, name=REPO)
        assert sha256_of(again) == sha256_of(built[dtype])


def test_wrong_pin_fails_without_writing_a_gguf(hub: dict[str, Any], tmp_path: Path) -> None:
    pins = dict(hub["pins"], **{"config.json": "f" * 64})
    out = tmp_path / "never.gguf"
    with pytest.raises(ChecksumMismatchError, match="config.json"):
        build_gpt2_gguf(
            _source(REPO, pins), out, base_url=hub["base_url"], cache_dir=tmp_path / "cache", **FAST
        )
    assert not out.exists()
    cached = checkpoint_cache_dir(tmp_path / "cache", REPO, REVISION)
    assert not (cached / "config.json").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "gguf_url"}, "source kind"),
        ({"dtype": "q4_0"}, "dtype"),
        ({"files": {"config.json": None}}, "model.safetensors"),
        ({"revision": ""}, "revision"),
    ],
)
def test_build_rejects_bad_sources(
    hub: dict[str, Any], tmp_path: Path, change: dict, message: str
) -> None:
    source = dict(_source(REPO, hub["pins"]), **change)
    with pytest.raises(ValueError, match=message):
        build_gpt2_gguf(
            source, tmp_path / "x.gguf", base_url=hub["base_url"], cache_dir=tmp_path / "cache"
        )


def test_gguf_metadata_is_what_llama_cpp_needs(hub: dict[str, Any], built: dict) -> None:
    reader = gguf.GGUFReader(built["f32"])
    fields = reader.fields
    vocab, merges = load_tiny_tokenizer(hub["checkpoint"])
    config = json.loads((hub["checkpoint"] / "config.json").read_text())
    eot = vocab[END_OF_TEXT]

    def value(key: str) -> Any:
        return fields[key].contents()

    assert value("general.architecture") == "gpt2"
    assert value("gpt2.context_length") == config["n_positions"]
    assert value("gpt2.embedding_length") == config["n_embd"]
    assert value("gpt2.feed_forward_length") == 4 * config["n_embd"]
    assert value("gpt2.block_count") == config["n_layer"]
    assert value("gpt2.attention.head_count") == config["n_head"]
    assert value("gpt2.attention.layer_norm_epsilon") == pytest.approx(1e-5)
    assert value("tokenizer.ggml.model") == "gpt2"
    assert value("tokenizer.ggml.pre") == "gpt-2"
    assert value("tokenizer.ggml.tokens") == sorted(vocab, key=vocab.__getitem__)
    assert value("tokenizer.ggml.merges") == [f"{a} {b}" for a, b in merges]
    types = value("tokenizer.ggml.token_type")
    assert types[eot] == gguf.TokenType.CONTROL
    assert set(types[:eot]) == {gguf.TokenType.NORMAL}
    assert value("tokenizer.ggml.bos_token_id") == eot
    assert value("tokenizer.ggml.eos_token_id") == eot
    assert value("tokenizer.ggml.add_bos_token") is False

    names = {tensor.name for tensor in reader.tensors}
    assert "output.weight" not in names  # tied: llama.cpp reuses token_embd
    assert {
        "token_embd.weight",
        "position_embd.weight",
        "output_norm.weight",
        "blk.1.attn_qkv.weight",
        "blk.1.ffn_down.bias",
    } <= names
    assert {tensor.tensor_type for tensor in reader.tensors} == {gguf.GGMLQuantizationType.F32}


# (b) logits against the numpy reference ----------------------------------------------------


@pytest.mark.parametrize("prompt", ["one-token", "sentence", "corpus", "with-eot"])
def test_f32_logits_match_numpy_reference(
    hub: dict[str, Any], models: dict[str, llama_cpp.Llama], prompt: str
) -> None:
    tokens = _prompts(hub["checkpoint"])[prompt]
    expected = reference_logits(hub["checkpoint"], tokens)
    got = llama_logits(models["f32"], tokens)
    scale = np.abs(expected).max()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=F32_RTOL * scale)
    assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_eos_dominant_layout_matches_reference(
    hub: dict[str, Any], models: dict[str, llama_cpp.Llama]
) -> None:
    """The other hub layout (``transformer.`` prefix, explicit tied ``lm_head``) converts too."""
    tokens = _prompts(hub["eos_checkpoint"])["sentence"]
    expected = reference_logits(hub["eos_checkpoint"], tokens)
    got = llama_logits(models["eos"], tokens)
    np.testing.assert_allclose(got, expected, rtol=0, atol=F32_RTOL * np.abs(expected).max())


def test_reference_check_catches_a_missing_transpose(
    hub: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A converter that forgets to transpose the (square) attention output still loads; the
    logit comparison is what exposes it."""
    monkeypatch.setattr(
        gpt2_module,
        "_CONV1D_SUFFIXES",
        tuple(s for s in gpt2_module._CONV1D_SUFFIXES if s != "attn.c_proj.weight"),
    )
    broken = convert_gpt2_to_gguf(hub["checkpoint"], tmp_path / "broken.gguf")
    tokens = _prompts(hub["checkpoint"])["sentence"]
    expected = reference_logits(hub["checkpoint"], tokens)
    llm = _load(broken)
    try:
        error = np.abs(llama_logits(llm, tokens) - expected).max()
    finally:
        llm.close()
    assert error > 10 * F32_RTOL * np.abs(expected).max()


# (c) tokenizer against the reference BPE ---------------------------------------------------


@pytest.mark.parametrize("text", TOKENIZER_STRINGS)
def test_tokenization_matches_reference_bpe(
    hub: dict[str, Any], models: dict[str, llama_cpp.Llama], text: str
) -> None:
    vocab, merges = load_tiny_tokenizer(hub["checkpoint"])
    expected = bpe_encode(text, vocab, merges)
    assert models["f32"].tokenize(text.encode("utf-8"), add_bos=False) == expected
    # Merges must actually fire, or the comparison would only test the byte fallback.
    if "the" in text:
        assert len(expected) < len(text.encode("utf-8"))


# (d) BOS/EOS -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["f32", "f16", "q8_0", "eos"])
def test_bos_and_eos_are_end_of_text(
    hub: dict[str, Any], models: dict[str, llama_cpp.Llama], key: str
) -> None:
    vocab, _ = load_tiny_tokenizer(hub["checkpoint"])
    eot = vocab[END_OF_TEXT]
    assert eot == len(vocab) - 1 != 11
    assert models[key].token_eos() == eot
    assert models[key].token_bos() == eot
    # No BOS is prepended, as with GPT-2's own tokenizer.
    assert models[key].tokenize(b"the", add_bos=True) == models[key].tokenize(b"the", add_bos=False)


# (e) early stop on EOS ---------------------------------------------------------------------


def test_eos_dominant_model_stops_early(
    hub: dict[str, Any], models: dict[str, llama_cpp.Llama]
) -> None:
    llm = models["eos"]
    llm.reset()
    llm._ctx.kv_cache_clear()
    tokens = _prompts(hub["eos_checkpoint"])["sentence"]
    result = llm.create_completion(tokens, max_tokens=10, temperature=0)
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["usage"]["completion_tokens"] < 10
    assert result["usage"]["prompt_tokens"] == len(tokens)


# (f) F16 and Q8_0 --------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "rtol"), [("f16", F16_RTOL), ("q8_0", Q8_0_RTOL)])
def test_lower_precisions_stay_close_to_f32(
    hub: dict[str, Any], models: dict[str, llama_cpp.Llama], dtype: str, rtol: float
) -> None:
    wanted = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
    reader = gguf.GGUFReader(models[dtype].model_path)
    by_name = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert by_name["blk.0.attn_qkv.weight"] == wanted[dtype]
    assert by_name["token_embd.weight"] == wanted[dtype]
    assert by_name["position_embd.weight"] == gguf.GGMLQuantizationType.F32
    assert by_name["blk.0.attn_norm.bias"] == gguf.GGMLQuantizationType.F32

    for tokens in _prompts(hub["checkpoint"]).values():
        reference = llama_logits(models["f32"], tokens)
        got = llama_logits(models[dtype], tokens)
        np.testing.assert_allclose(got, reference, rtol=0, atol=rtol * np.abs(reference).max())
