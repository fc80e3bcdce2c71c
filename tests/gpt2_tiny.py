"""A tiny GPT-2 checkpoint in the Hugging Face layout, and a local hub to serve it.

Tests cannot reach a model hub, so they make their own GPT-2: random weights from a fixed
numpy seed, two layers, and a small byte-level BPE vocabulary (GPT-2's 256 byte tokens, a few
dozen merges learned from a fixed English text, and ``<|endoftext|>`` as the last id). It has
exactly the files and tensor names of a real GPT-2 repository, so the real download and
conversion code runs on it unchanged.

This module also holds the reference GPT-2 tokenizer (pre-tokenizer + BPE by merge rank) the
tests compare llama.cpp's tokenization with. It is a helper module, not a test file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import shutil
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from kvcache_exp.models.gpt2 import END_OF_TEXT, bytes_to_unicode

#: Text the tiny tokenizer learns its merges from (fixed, so the vocabulary is too).
CORPUS = (
    "The cache holds the keys and the values of every token the model has seen. "
    "When the start of the prompt stays the same, the model reuses them and only reads "
    "the new tokens; when the start changes, it has to read the whole prompt again. "
    "That is the cost we measure: the time to the first token with and without the cache. "
    "There are three sizes of the context, and ten trials for each of them. "
    "It's the same test the seed ran, and we'll run it again on the same model. "
    "The seed saw 28 ms with the cache and 150 ms, 221 ms and 281 ms without it (+434%, "
    "+672%, +906%)... so the miss costs more when more of the context is kept. "
    "Ten trials, 10 more trials, 100 trials: the numbers (28 ms) stay the same (28 ms)."
)

#: llama.cpp's whitespace set (unicode.cpp), which GPT-2's ``\s`` means in practice.
_WHITESPACE = frozenset(
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B)]
    + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
)


def _char_class(ch: str | None) -> str:
    """'S' whitespace, 'L' letter, 'N' number, 'P' anything else, '' past the end."""
    if ch is None:
        return ""
    if ord(ch) in _WHITESPACE:
        return "S"
    category = unicodedata.category(ch)
    if category.startswith("L"):
        return "L"
    if category.startswith("N"):
        return "N"
    return "P"


def pretokenize(text: str) -> list[str]:
    """Split text as GPT-2's regex does.

    ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``,
    written out by hand because Python's ``re`` has no ``\\p{L}``.
    """
    words: list[str] = []
    n = len(text)
    pos = 0

    def at(i: int) -> str | None:
        return text[i] if i < n else None

    while pos < n:
        start = pos
        ch = text[pos]
        if ch == "'" and pos + 1 < n:
            if text[pos + 1] in "stmd":
                words.append(text[pos : pos + 2])
                pos += 2
                continue
            if text[pos + 1 : pos + 3] in ("re", "ve", "ll"):
                words.append(text[pos : pos + 3])
                pos += 3
                continue
        lead = _char_class(at(pos + 1)) if ch == " " else _char_class(ch)
        if lead in ("L", "N", "P"):
            pos += ch == " "
            while _char_class(at(pos)) == lead:
                pos += 1
            words.append(text[start:pos])
            continue
        spaces = 0
        while _char_class(at(pos + spaces)) == "S":
            spaces += 1
        if spaces > 1 and pos + spaces < n:
            pos += spaces - 1  # \s+(?!\S): leave the last space to the next word
        elif spaces > 0:
            pos += spaces
        else:
            pos += 1
        words.append(text[start:pos])
    return words


def _merge_word(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(word[i] + word[i + 1])
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)


def train_merges(text: str, n_merges: int) -> list[tuple[str, str]]:
    """Learn byte-level BPE merges: repeatedly merge the most frequent adjacent pair.

    Ties go to the lexicographically smallest pair, so the result is deterministic.
    """
    b2u = bytes_to_unicode()
    words = Counter(tuple(b2u[b] for b in word.encode("utf-8")) for word in pretokenize(text))
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs.items(), key=lambda item: (-item[1], item[0]))[0]
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            merged[_merge_word(word, best)] += count
        words = merged
    return merges


def bpe_encode(text: str, vocab: dict[str, int], merges: list[tuple[str, str]]) -> list[int]:
    """Reference GPT-2 tokenization: pre-tokenize, then merge each word's bytes by rank."""
    b2u = bytes_to_unicode()
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    ids: list[int] = []
    for word in pretokenize(text):
        symbols = [b2u[b] for b in word.encode("utf-8")]
        while len(symbols) > 1:
            pairs = list(zip(symbols, symbols[1:], strict=False))
            rank, pair = min((ranks.get(p, float("inf")), p) for p in pairs)
            if rank == float("inf"):
                break
            symbols = list(_merge_word(tuple(symbols), pair))
        ids.extend(vocab[symbol] for symbol in symbols)
    return ids


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """256 byte tokens in GPT-2's order, then one token per new merge, then end-of-text."""
    vocab: dict[str, int] = {}
    for char in bytes_to_unicode().values():
        vocab[char] = len(vocab)
    for first, second in merges:
        vocab.setdefault(first + second, len(vocab))
    vocab[END_OF_TEXT] = len(vocab)
    return vocab


def make_tiny_checkpoint(
    dest_dir: Path,
    *,
    seed: int = 1234,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 128,
    n_merges: int = 64,
    eos_dominant: bool = False,
    dominant: str | None = None,
) -> Path:
    """Write config.json, model.safetensors, vocab.json, merges.txt for a tiny GPT-2.

    Weights are drawn at scales that give logits of a few units, so that a transposed or
    misplaced tensor changes the output by far more than any rounding.

    With ``eos_dominant`` the final layer norm maps every hidden state onto one vector that
    the end-of-text embedding row is aligned with, so greedy decoding emits EOS at once (the
    seed's early-stop path). That checkpoint also uses the other layout found on the hub
    (``transformer.`` prefix and an explicit, tied ``lm_head.weight``). ``dominant`` does
    the same for another token of the vocabulary (its byte-level string), e.g. a lone UTF-8
    lead byte, so that greedy decoding emits it again and again.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    merges = train_merges(CORPUS, n_merges)
    vocab = build_vocab(merges)
    n_vocab = len(vocab)
    eot = vocab[END_OF_TEXT]
    rng = np.random.default_rng(seed)

    def normal(scale: float, *shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    tensors: dict[str, np.ndarray] = {
        "wte.weight": normal(0.5, n_vocab, n_embd),
        "wpe.weight": normal(0.2, n_positions, n_embd),
    }
    causal = np.tril(np.ones((n_positions, n_positions), dtype=np.float32))[None, None]
    for layer in range(n_layer):
        prefix = f"h.{layer}."
        tensors.update(
            {
                prefix + "ln_1.weight": 1.0 + normal(0.1, n_embd),
                prefix + "ln_1.bias": normal(0.1, n_embd),
                prefix + "attn.bias": causal,  # buffer real GPT-2 checkpoints carry
                prefix + "attn.c_attn.weight": normal(n_embd**-0.5, n_embd, 3 * n_embd),
                prefix + "attn.c_attn.bias": normal(0.1, 3 * n_embd),
                prefix + "attn.c_proj.weight": normal(n_embd**-0.5, n_embd, n_embd),
                prefix + "attn.c_proj.bias": normal(0.1, n_embd),
                prefix + "ln_2.weight": 1.0 + normal(0.1, n_embd),
                prefix + "ln_2.bias": normal(0.1, n_embd),
                prefix + "mlp.c_fc.weight": normal(n_embd**-0.5, n_embd, 4 * n_embd),
                prefix + "mlp.c_fc.bias": normal(0.1, 4 * n_embd),
                prefix + "mlp.c_proj.weight": normal((4 * n_embd) ** -0.5, 4 * n_embd, n_embd),
                prefix + "mlp.c_proj.bias": normal(0.1, n_embd),
            }
        )
    tensors["ln_f.weight"] = 1.0 + normal(0.1, n_embd)
    tensors["ln_f.bias"] = normal(0.1, n_embd)

    if eos_dominant or dominant is not None:
        direction = np.ones(n_embd, dtype=np.float32)
        tensors["ln_f.weight"] = np.zeros(n_embd, dtype=np.float32)
        tensors["ln_f.bias"] = direction
        winner = eot if dominant is None else vocab[dominant]
        tensors["wte.weight"][winner] = direction  # logit n_embd for it, ~N(0, 4) for the rest
    if eos_dominant:
        tensors = {"transformer." + name: array for name, array in tensors.items()}
        tensors["lm_head.weight"] = tensors["transformer.wte.weight"].copy()

    config = {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "bos_token_id": eot,
        "eos_token_id": eot,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": n_positions,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_layer": n_layer,
        "n_positions": n_positions,
        "vocab_size": n_vocab,
    }
    (dest_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (dest_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    save_file(
        {name: np.ascontiguousarray(a) for name, a in tensors.items()},
        str(dest_dir / "model.safetensors"),
    )
    return dest_dir


def load_tiny_tokenizer(checkpoint_dir: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab.json and merges.txt of a checkpoint, as the reference tokenizer takes them."""
    vocab = json.loads((checkpoint_dir / "vocab.json").read_text(encoding="utf-8"))
    lines = (checkpoint_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#")]
    return vocab, merges  # type: ignore[return-value]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def publish_hf_layout(root: Path, repo: str, revision: str, checkpoint_dir: Path) -> dict[str, str]:
    """Copy a checkpoint to ``<root>/<repo>/resolve/<revision>/`` (the hub's URL layout).

    Returns file name -> sha256, i.e. the ``files`` mapping of a catalog entry.
    """
    target = Path(root) / repo / "resolve" / revision
    target.mkdir(parents=True, exist_ok=True)
    pins: dict[str, str] = {}
    for path in sorted(Path(checkpoint_dir).iterdir()):
        if path.is_file():
            shutil.copyfile(path, target / path.name)
            pins[path.name] = sha256_of(path)
    return pins


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Keep test output clean."""


@contextlib.contextmanager
def serve_directory(path: Path) -> Iterator[str]:
    """Serve ``path`` over HTTP on 127.0.0.1 (a free port) in a thread; yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="tiny-hub", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
