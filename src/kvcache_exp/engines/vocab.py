"""A model's vocabulary and position scheme, read from its GGUF without its weights.

Two things need the model file but not an inference engine: tokenizing on the client
for a server that has no ``/tokenize`` (llama-cpp-python's own OpenAI-compatible
server, for one), and knowing what a KV shift can correct (RoPE keys are rotated again;
absolute position embeddings stay baked into the cached states). llama.cpp loads a
GGUF with ``vocab_only`` in milliseconds, whatever the model's size, and answers both
exactly as the in-process engine would: the same tokenizer code, the same metadata.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Iterator
from pathlib import Path

import llama_cpp

from kvcache_exp.engines.base import EngineError

ROPE = "rope"
ABSOLUTE = "none (absolute positions)"


_log = logging.getLogger("llama.cpp")
#: ggml's log level for errors (enum ggml_log_level: NONE, INFO, WARN, ERROR, DEBUG, CONT).
GGML_LOG_LEVEL_ERROR = 3


@llama_cpp.llama_log_callback
def _to_logging(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp's log in ours: its errors as warnings, the rest (a line per graph node
    on every decode at debug level) dropped, as llama_cpp.Llama(verbose=False) does."""
    if level == GGML_LOG_LEVEL_ERROR:
        _log.warning("%s", text.decode("utf-8", errors="replace").rstrip())


def quiet_log() -> None:
    """Send llama.cpp's log through :func:`_to_logging` from now on."""
    llama_cpp.llama_log_set(_to_logging, ctypes.c_void_p(0))


@contextlib.contextmanager
def captured_log(lines: list[str]) -> Iterator[None]:
    """Collect llama.cpp's log lines (e.g. its offload report) while loading a model.

    Loading with ``verbose=True`` would print them, but verbose mode also resets
    llama.cpp's performance counters after every call, which the protocol reads.
    """

    @llama_cpp.llama_log_callback
    def _collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(_collect, ctypes.c_void_p(0))
    try:
        yield
    finally:
        quiet_log()


def rope_correction(model: llama_cpp.llama_model_p) -> str:
    """What a KV shift corrects for a loaded llama.cpp model: :data:`ROPE` or
    :data:`ABSOLUTE` (llama.cpp shifts either kind of cache; only RoPE keys change)."""
    rope = llama_cpp.llama_model_rope_type(model)
    return ABSOLUTE if rope == llama_cpp.LLAMA_ROPE_TYPE_NONE else ROPE


class Tokenizer:
    """llama.cpp's tokenizer of a loaded model: the in-process engine tokenizes with its
    model's, a client-side tokenizer with a vocabulary-only load (:class:`Vocabulary`)."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p) -> None:
        self.vocab = vocab

    @property
    def adds_bos(self) -> bool:
        """Whether the model asks for a BOS token before a text prompt (its GGUF's
        ``tokenizer.ggml.add_bos_token``): a server that tokenizes text adds it."""
        return bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        """Tokens of ``text``, never with BOS; ``special`` reads special-token text
        (``<|im_start|>``) as those tokens, as a server tokenizing a prompt does."""
        data = text.encode("utf-8")
        size = len(data) + 8
        while True:
            buf = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, size, False, special)
            if n >= 0:
                return list(buf[:n])
            size = -n

    def detokenize(self, tokens: list[int], special: bool = False) -> str:
        """The text of ``tokens`` (invalid UTF-8 replaced); special tokens rendered empty,
        or as their text with ``special`` (a chat template's markers are text there)."""
        if not tokens:
            return ""
        ids = (llama_cpp.llama_token * len(tokens))(*tokens)
        size = 16 * len(tokens) + 16
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(self.vocab, ids, len(tokens), buf, size, False, special)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n


class Vocabulary(Tokenizer):
    """The tokenizer of the GGUF at ``model_path``, loaded without weights."""

    def __init__(self, model_path: str | Path) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise EngineError(f"{self.model_path} does not exist (no GGUF to read)")
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        log: list[str] = []
        with captured_log(log):  # llama.cpp's load log would otherwise go to stderr
            model = llama_cpp.llama_model_load_from_file(str(self.model_path).encode(), params)
        if not model:
            tail = "".join(log).strip().splitlines()[-3:]
            raise EngineError(
                f"llama.cpp could not read the vocabulary of {self.model_path}: "
                + (" / ".join(tail) or "no reason given")
            )
        self.model: llama_cpp.llama_model_p | None = model
        super().__init__(llama_cpp.llama_model_get_vocab(model))

    def position_correction(self) -> str:
        """:func:`rope_correction` of this model."""
        if self.model is None:
            raise EngineError("the vocabulary was closed")
        return rope_correction(self.model)

    def close(self) -> None:
        if self.model is not None:
            llama_cpp.llama_model_free(self.model)
            self.model = None


def position_correction(model_path: str | Path | None) -> str:
    """What a KV shift can correct for the model in ``model_path``, read from its GGUF;
    "unknown (...)" when there is no file to read (an external server's model)."""
    if model_path is None or not Path(model_path).is_file():
        return "unknown (external server)"
    try:
        vocab = Vocabulary(model_path)
    except EngineError:
        return "unknown (llama.cpp could not read the model file)"
    try:
        return vocab.position_correction()
    finally:
        vocab.close()
