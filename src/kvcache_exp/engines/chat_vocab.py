"""A model's tokenizer as a chat front-end uses it, read from its GGUF without weights.

A rendered chat prompt holds the template's markers as text (``<|im_start|>``), which
the engines read as the special tokens they stand for; the prefix tripwire needs them
back as text. So, unlike the protocol's tokenizer (plain text, no special tokens):

* :meth:`ChatVocabulary.tokenize` parses special-token text, and puts the BOS token
  first when the model asks for one (``tokenizer.ggml.add_bos_token``) and the template
  did not render it, as llama-server does (llama-cpp-python's chat handler adds none:
  the two agree for every template that renders ``bos_token`` itself);
* :meth:`ChatVocabulary.detokenize` renders special tokens as their text;
* the chat template (``tokenizer.chat_template``) and the texts of the BOS and EOS
  tokens, which the template receives as ``bos_token`` and ``eos_token``, come from
  the same file.

One tokenizer for every engine: the in-process engine and llama-server load the same
GGUF, so client-side rendering sends them the same token ids.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp

from kvcache_exp.engines.base import EngineError
from kvcache_exp.engines.vocab import Vocabulary

#: Bytes read for the chat template's metadata value at first (longer ones are re-read).
_META_BYTES = 4096


class ChatVocabulary:
    """The chat tokenizer, template and special tokens of the GGUF at ``model_path``."""

    def __init__(self, model_path: str | Path) -> None:
        self.model_path = Path(model_path)
        self._vocab = Vocabulary(self.model_path)
        self.vocab = self._vocab.vocab
        self.bos_id = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.eos_id = int(llama_cpp.llama_vocab_eos(self.vocab))
        self.adds_bos = self._vocab.adds_bos

    def token_text(self, token: int) -> str:
        """The text of a token as templates use it ('' for no such token)."""
        if token < 0:
            return ""
        return llama_cpp.llama_vocab_get_text(self.vocab, token).decode("utf-8", errors="replace")

    @property
    def bos_text(self) -> str:
        return self.token_text(self.bos_id)

    @property
    def eos_text(self) -> str:
        return self.token_text(self.eos_id)

    def chat_template(self) -> str | None:
        """The GGUF's ``tokenizer.chat_template``, or None when it has none."""
        model = self._vocab.model
        if model is None:
            raise EngineError("the vocabulary was closed")
        key = b"tokenizer.chat_template"
        size = _META_BYTES
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_model_meta_val_str(model, key, buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    def tokenize(self, text: str) -> list[int]:
        """The tokens an engine evaluates for a rendered prompt."""
        tokens = self._vocab.tokenize(text, special=True)
        if self.adds_bos and self.bos_id >= 0 and (not tokens or tokens[0] != self.bos_id):
            tokens.insert(0, self.bos_id)
        return tokens

    def tokenize_part(self, text: str) -> list[int]:
        """The tokens of a part of a prompt (a reply's text): special tokens parsed, no
        BOS."""
        return self._vocab.tokenize(text, special=True)

    def detokenize(self, tokens: list[int]) -> str:
        """The text of ``tokens``, special tokens as their text (invalid UTF-8 replaced)."""
        return self._vocab.detokenize(tokens, special=True)

    def close(self) -> None:
        self._vocab.close()
