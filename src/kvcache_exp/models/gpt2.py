"""GPT-2 family checkpoints: fetch from a Hugging Face style hub, convert to GGUF.

The seed experiment ran GPT-2 (124M) as an F32 GGUF in llama-cpp-python. To reproduce it
without trusting a third-party GGUF, the workflow downloads the original Hugging Face
checkpoint at a pinned revision, checks every file against a pinned sha256, and converts it
here with the ``gguf`` library (the same library llama.cpp's own converter uses). No torch is
needed: the weights are read with ``safetensors.numpy``. It is one module of about 520
lines on purpose: fetching a checkpoint, its tokenizer and its tensors, and writing them as
GGUF are one chain of checks that a reader should be able to follow in one file.

What the converter must get right, because llama.cpp does not complain when it is wrong:

* Hugging Face GPT-2 stores its linear layers as ``Conv1D`` with weights shaped
  ``(in, out)``; ggml wants ``(out, in)`` in numpy order, so those four weights per block are
  transposed. A missing transpose still loads when ``in == out`` (``attn_output``) and then
  produces garbage; the tests compare logits with a numpy reference to catch that.
* The tokenizer must be the byte-level BPE (``tokenizer.ggml.model = gpt2``) with the
  ``gpt-2`` pre-tokenizer, the merges in rank order, and BOS/EOS set to the end-of-text id.
  llama.cpp defaults BOS and EOS to 11 (a comma in GPT-2's vocabulary) when they are missing,
  which silently breaks the early-stop (EOS) behaviour the seed describes.
* The output projection is tied to the token embedding, so no ``output.weight`` is written
  (llama.cpp then reuses ``token_embd``) unless the checkpoint has an untied ``lm_head``.

The output is deterministic: the same checkpoint and dtype always give the same bytes, so a
GGUF's sha256 identifies the model a measurement ran on.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kvcache_exp.models.download import download_file

logger = logging.getLogger(__name__)

#: The source ``kind`` this module builds, as named in the model catalog.
SOURCE_KIND = "huggingface_gpt2"

#: Files every GPT-2 checkpoint must provide for a conversion.
REQUIRED_FILES: tuple[str, ...] = ("config.json", "model.safetensors", "vocab.json", "merges.txt")

#: Output precisions; q8_0 quantizes 2-D weights only (as llama.cpp's converter does).
DTYPES: tuple[str, ...] = ("f32", "f16", "q8_0")

#: GPT-2's end-of-text token, BOS and EOS alike.
END_OF_TEXT = "<|endoftext|>"

#: The pre-tokenizer name llama.cpp maps to GPT-2's regex.
GGUF_PRE_TOKENIZER = "gpt-2"

_CONV1D_SUFFIXES = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
_BLOCK_MAP = {
    "ln_1.weight": "attn_norm.weight",
    "ln_1.bias": "attn_norm.bias",
    "attn.c_attn.weight": "attn_qkv.weight",
    "attn.c_attn.bias": "attn_qkv.bias",
    "attn.c_proj.weight": "attn_output.weight",
    "attn.c_proj.bias": "attn_output.bias",
    "ln_2.weight": "ffn_norm.weight",
    "ln_2.bias": "ffn_norm.bias",
    "mlp.c_fc.weight": "ffn_up.weight",
    "mlp.c_fc.bias": "ffn_up.bias",
    "mlp.c_proj.weight": "ffn_down.weight",
    "mlp.c_proj.bias": "ffn_down.bias",
}
_TOP_MAP = {
    "wte.weight": "token_embd.weight",
    "wpe.weight": "position_embd.weight",
    "ln_f.weight": "output_norm.weight",
    "ln_f.bias": "output_norm.bias",
}
#: Non-parameter buffers some GPT-2 checkpoints carry (the causal mask); not model weights.
_IGNORED_BLOCK_SUFFIXES = ("attn.bias", "attn.masked_bias")
_BLOCK_RE = re.compile(r"^h\.(\d+)\.(.+)$")
_HEX40_RE = re.compile(r"^[0-9a-f]{40}$")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Byte-level BPE vocabularies (vocab.json, merges.txt) spell every token with these
    characters (a space is ``Ġ``, a newline ``Ċ``), so that each token is a plain string.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes, strict=True)}


def hf_file_url(base_url: str, repo: str, revision: str, name: str) -> str:
    """The ``resolve`` URL of one file of a hub repository at a revision."""
    return f"{base_url.rstrip('/')}/{repo}/resolve/{revision}/{name}"


def fetch_hf_checkpoint(
    base_url: str,
    repo: str,
    revision: str,
    files: Mapping[str, str | None],
    dest_dir: Path,
    **download_kwargs: Any,
) -> Path:
    """Download each file of ``repo`` at ``revision`` into ``dest_dir``, verified.

    Args:
        base_url: Hub root, e.g. ``https://huggingface.co`` or a mirror with the same layout
            (``{base_url}/{repo}/resolve/{revision}/{name}``).
        repo: ``owner/name``.
        revision: Commit hash (a branch name works but is not reproducible).
        files: File name -> pinned sha256 (``None``: accepted unverified, with a warning).
        dest_dir: Where the files go (created if needed); files already there with the pinned
            sha256 are not downloaded again.
        **download_kwargs: Passed to :func:`kvcache_exp.download.download_file` (retries,
            timeout, backoff).

    Returns:
        ``dest_dir``.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if not _HEX40_RE.match(revision):
        logger.warning(
            "Revision %r of %s is not a 40-hex commit hash: the download is not pinned",
            revision,
            repo,
        )
    for name in sorted(files):
        download_file(
            hf_file_url(base_url, repo, revision, name),
            dest_dir / name,
            files[name],
            **download_kwargs,
        )
    return dest_dir


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _read_merges(path: Path) -> list[str]:
    """merges.txt without its ``#version`` header or blank lines, in rank order."""
    merges: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = raw.rstrip("\r\n")
            if not line or (line_number == 1 and line.startswith("#version")):
                continue
            if len(line.split(" ")) != 2:
                raise ValueError(f"{path}:{line_number}: a merge must be two tokens, got {line!r}")
            merges.append(line)
    return merges


def _load_tokenizer(
    checkpoint_dir: Path, n_vocab: int, config: Mapping[str, Any]
) -> tuple[list[str], list[int], list[str], int, int]:
    """Return tokens, token types, merges, BOS id and EOS id for the GGUF."""
    import gguf

    vocab: dict[str, int] = _read_json(checkpoint_dir / "vocab.json")
    tokens: list[str | None] = [None] * n_vocab
    special_ids: set[int] = set()
    for token, index in vocab.items():
        if not 0 <= index < n_vocab:
            raise ValueError(f"vocab.json: id {index} of {token!r} is outside 0..{n_vocab - 1}")
        if tokens[index] is not None:
            raise ValueError(f"vocab.json: id {index} is used twice")
        tokens[index] = token

    tokenizer_json = checkpoint_dir / "tokenizer.json"
    if tokenizer_json.exists():
        for added in _read_json(tokenizer_json).get("added_tokens", []):
            index = int(added["id"])
            if 0 <= index < n_vocab:
                tokens[index] = added["content"]
                if added.get("special", False):
                    special_ids.add(index)

    eot_id = vocab.get(END_OF_TEXT)
    eos_id = config.get("eos_token_id", eot_id)
    bos_id = config.get("bos_token_id", eot_id)
    if eos_id is None or bos_id is None:
        raise ValueError(
            f"Cannot tell the end-of-text id: config.json has no eos/bos_token_id and vocab.json "
            f"has no {END_OF_TEXT!r}; without it llama.cpp would use id 11 as EOS"
        )
    for label, index in (("eos_token_id", eos_id), ("bos_token_id", bos_id)):
        if not 0 <= int(index) < n_vocab or tokens[int(index)] is None:
            raise ValueError(f"config.json: {label} {index} is not a token of the vocabulary")
    special_ids.update({int(eos_id), int(bos_id)})

    token_types: list[int] = []
    final_tokens: list[str] = []
    padded = 0
    for index, token in enumerate(tokens):
        if token is None:
            # Embedding rows beyond the tokenizer (some checkpoints pad the matrix).
            final_tokens.append(f"[PAD{index}]")
            token_types.append(int(gguf.TokenType.UNUSED))
            padded += 1
        else:
            final_tokens.append(token)
            kind = gguf.TokenType.CONTROL if index in special_ids else gguf.TokenType.NORMAL
            token_types.append(int(kind))
    if padded:
        logger.warning("%d embedding rows have no token in vocab.json; written as unused", padded)

    merges = _read_merges(checkpoint_dir / "merges.txt")
    return final_tokens, token_types, merges, int(bos_id), int(eos_id)


def _canonical_tensors(
    state: Mapping[str, np.ndarray], n_layer: int
) -> list[tuple[str, np.ndarray]]:
    """Map Hugging Face GPT-2 tensor names to llama.cpp's, in a fixed order.

    Raises on any tensor it does not know, so that a checkpoint of another layout fails loudly
    instead of converting into a model that silently lacks weights.
    """
    top: dict[str, np.ndarray] = {}
    blocks: dict[int, dict[str, np.ndarray]] = {}
    lm_head: np.ndarray | None = None
    for full_name, array in state.items():
        name = full_name.removeprefix("transformer.")
        if name == "lm_head.weight":
            lm_head = array
            continue
        if name in _TOP_MAP:
            top[_TOP_MAP[name]] = array
            continue
        match = _BLOCK_RE.match(name)
        if match:
            block, suffix = int(match.group(1)), match.group(2)
            if suffix in _IGNORED_BLOCK_SUFFIXES:
                continue
            if suffix in _BLOCK_MAP:
                if suffix in _CONV1D_SUFFIXES:
                    # Conv1D stores (in, out); ggml wants (out, in).
                    array = array.T
                blocks.setdefault(block, {})[_BLOCK_MAP[suffix]] = array
                continue
        raise ValueError(f"model.safetensors: unexpected tensor {full_name!r} for GPT-2")

    missing = [name for name in _TOP_MAP.values() if name not in top]
    if sorted(blocks) != list(range(n_layer)):
        raise ValueError(f"model.safetensors: blocks {sorted(blocks)} but n_layer is {n_layer}")
    for block, tensors in blocks.items():
        missing += [f"blk.{block}.{n}" for n in _BLOCK_MAP.values() if n not in tensors]
    if missing:
        raise ValueError(f"model.safetensors: missing tensors {missing}")

    ordered = [(name, top[name]) for name in ("token_embd.weight", "position_embd.weight")]
    for block in range(n_layer):
        ordered += [(f"blk.{block}.{n}", blocks[block][n]) for n in _BLOCK_MAP.values()]
    ordered += [(name, top[name]) for name in ("output_norm.weight", "output_norm.bias")]
    if lm_head is not None and not np.array_equal(lm_head, top["token_embd.weight"]):
        logger.info("lm_head.weight is not tied to wte.weight: writing output.weight")
        ordered.append(("output.weight", lm_head))
    return ordered


def _encode_tensor(name: str, array: np.ndarray, dtype: str) -> tuple[np.ndarray, Any]:
    """Return (data, raw ggml type or None) for one tensor at the requested precision.

    Biases, norms and the position embedding stay F32, as in llama.cpp's converter: they are
    tiny, and quantizing them costs accuracy for no size gain.
    """
    import gguf

    data = np.ascontiguousarray(array, dtype=np.float32)
    if data.ndim <= 1 or name == "position_embd.weight" or dtype == "f32":
        return data, None
    if dtype == "f16":
        return data.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType.Q8_0
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.quants.QuantError:
        logger.warning("%s %s cannot be Q8_0 (row size); writing it as F16", name, data.shape)
        return data.astype(np.float16), None


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}


def add_byte_bpe_tokenizer(
    writer: Any,
    tokens: list[str],
    token_types: list[int],
    merges: list[str],
    bos_id: int,
    eos_id: int,
) -> None:
    """GPT-2's byte-level BPE tokenizer, as llama.cpp reads it: the ``gpt2`` model with the
    ``gpt-2`` pre-tokenizer, the merges in rank order, and BOS/EOS set explicitly
    (llama.cpp would default them to 11, a comma in GPT-2's vocabulary)."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(GGUF_PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(bos_id)
    writer.add_eos_token_id(eos_id)
    # GPT-2 never prepends BOS (Hugging Face's tokenizer does not either); explicit so that
    # prompt token counts do not depend on llama.cpp's default.
    writer.add_add_bos_token(False)


def write_gguf(
    out_path: Path,
    arch: str,
    dtype: str,
    describe: Callable[[Any], None],
    tensors: Iterable[tuple[str, np.ndarray, Any]],
) -> Path:
    """Write a GGUF: ``describe(writer)`` adds the metadata, ``tensors`` are
    ``(name, data, raw ggml type or None)``. Written to ``<out_path>.tmp`` and renamed, so
    an interrupted write never leaves a truncated model under the final name."""
    import gguf

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(out_path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp_path), arch)
    try:
        describe(writer)
        writer.add_file_type(int(getattr(gguf.LlamaFileType, FILE_TYPES[dtype])))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for tensor_name, data, raw_dtype in tensors:
            writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        tmp_path.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(tmp_path, out_path)
    return out_path


def convert_gpt2_to_gguf(
    checkpoint_dir: Path,
    out_path: Path,
    dtype: str = "f32",
    *,
    name: str | None = None,
) -> Path:
    """Convert a Hugging Face GPT-2 checkpoint directory to a GGUF llama.cpp loads.

    Args:
        checkpoint_dir: Holds config.json, model.safetensors, vocab.json, merges.txt
            (tokenizer.json optional: its added special tokens are marked as control tokens).
        out_path: The GGUF to write. Written to ``<out_path>.tmp`` first and renamed, so an
            interrupted conversion never leaves a truncated GGUF under the final name.
        dtype: ``f32`` (the seed's precision), ``f16`` or ``q8_0``.
        name: ``general.name`` in the file; defaults to the checkpoint's model_type.

    Returns:
        ``out_path``.
    """
    from safetensors.numpy import load_file

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    checkpoint_dir = Path(checkpoint_dir)
    out_path = Path(out_path)
    for required in REQUIRED_FILES:
        if not (checkpoint_dir / required).is_file():
            raise FileNotFoundError(f"{checkpoint_dir / required} is missing")

    config: dict[str, Any] = _read_json(checkpoint_dir / "config.json")
    if config.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"config.json: model_type {config.get('model_type')!r} is not gpt2")
    n_layer = int(config["n_layer"])
    n_head = int(config["n_head"])
    n_embd = int(config["n_embd"])
    n_ctx = int(config.get("n_positions", config.get("n_ctx", 1024)))
    eps = float(config.get("layer_norm_epsilon", 1e-5))
    if n_embd % n_head:
        raise ValueError(f"n_embd {n_embd} is not a multiple of n_head {n_head}")
    if config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        # llama.cpp's gpt2 graph uses the tanh GELU; anything else would convert but differ.
        raise ValueError(f"activation {config['activation_function']!r} is not GPT-2's gelu_new")

    logger.info("Reading %s", checkpoint_dir / "model.safetensors")
    state = load_file(str(checkpoint_dir / "model.safetensors"))
    tensors = _canonical_tensors(state, n_layer)
    shapes = {tensor_name: array.shape for tensor_name, array in tensors}
    n_vocab = shapes["token_embd.weight"][0]
    n_ff = shapes["blk.0.ffn_up.weight"][0]
    wpe_shape = shapes["position_embd.weight"]
    if shapes["token_embd.weight"][1] != n_embd or wpe_shape != (n_ctx, n_embd):
        raise ValueError(
            f"config.json (n_embd {n_embd}, n_positions {n_ctx}) does not match the weights "
            f"(wte {shapes['token_embd.weight']}, wpe {wpe_shape})"
        )
    if shapes["blk.0.attn_qkv.weight"] != (3 * n_embd, n_embd):
        raise ValueError(f"attn_qkv has shape {shapes['blk.0.attn_qkv.weight']}")

    tokens, token_types, merges, bos_id, eos_id = _load_tokenizer(checkpoint_dir, n_vocab, config)

    def describe(writer: Any) -> None:
        writer.add_name(name or str(config.get("model_type", "gpt2")))
        writer.add_context_length(n_ctx)
        writer.add_embedding_length(n_embd)
        writer.add_feed_forward_length(n_ff)
        writer.add_block_count(n_layer)
        writer.add_head_count(n_head)
        writer.add_layer_norm_eps(eps)
        add_byte_bpe_tokenizer(writer, tokens, token_types, merges, bos_id, eos_id)

    encoded = ((n, *_encode_tensor(n, array, dtype)) for n, array in tensors)
    write_gguf(out_path, "gpt2", dtype, describe, encoded)
    logger.info(
        "Wrote %s (%s, %d layers, n_embd %d, vocab %d, BOS/EOS %d/%d)",
        out_path,
        dtype,
        n_layer,
        n_embd,
        n_vocab,
        bos_id,
        eos_id,
    )
    return out_path


def checkpoint_cache_dir(cache_dir: Path, repo: str, revision: str) -> Path:
    """Where :func:`build_gpt2_gguf` keeps one revision of one repository."""
    return Path(cache_dir) / repo.replace("/", "--") / revision


def build_gpt2_gguf(
    source: Mapping[str, Any],
    out_path: Path,
    *,
    base_url: str,
    cache_dir: Path,
    **download_kwargs: Any,
) -> Path:
    """Fetch the checkpoint a catalog entry's ``source`` names and convert it to ``out_path``.

    ``source`` looks like ``{"kind": "huggingface_gpt2", "repo": "openai-community/gpt2",
    "revision": "<commit>", "dtype": "f32", "files": {"config.json": "<sha256>", ...}}``.
    The files are cached under ``cache_dir/<owner>--<name>/<revision>/`` so that a rerun (or a
    user who downloaded them by hand) does not download again.

    Args:
        source: The catalog entry's ``source`` mapping.
        out_path: The GGUF to write.
        base_url: Hub root or mirror (configurable so that a mirror works).
        cache_dir: Root of the checkpoint cache.
        **download_kwargs: Passed on to the downloader (retries, timeout, backoff).

    Returns:
        ``out_path``.
    """
    kind = source.get("kind")
    if kind != SOURCE_KIND:
        raise ValueError(f"source kind must be {SOURCE_KIND!r}, got {kind!r}")
    for key in ("repo", "revision", "files"):
        if not source.get(key):
            raise ValueError(f"source is missing {key!r}")
    repo = str(source["repo"])
    revision = str(source["revision"])
    dtype = str(source.get("dtype", "f32"))
    if dtype not in DTYPES:
        raise ValueError(f"source dtype must be one of {DTYPES}, got {dtype!r}")
    files: dict[str, str | None] = dict(source["files"])
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise ValueError(f"source files lack {missing}; a GPT-2 conversion needs {REQUIRED_FILES}")

    checkpoint_dir = checkpoint_cache_dir(Path(cache_dir), repo, revision)
    logger.info("Fetching %s@%s from %s into %s", repo, revision, base_url, checkpoint_dir)
    fetch_hf_checkpoint(base_url, repo, revision, files, checkpoint_dir, **download_kwargs)
    return convert_gpt2_to_gguf(checkpoint_dir, Path(out_path), dtype, name=repo)


__all__ = [
    "DTYPES",
    "END_OF_TEXT",
    "REQUIRED_FILES",
    "SOURCE_KIND",
    "build_gpt2_gguf",
    "bytes_to_unicode",
    "checkpoint_cache_dir",
    "convert_gpt2_to_gguf",
    "fetch_hf_checkpoint",
    "hf_file_url",
]
