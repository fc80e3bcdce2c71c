"""Messages to prompt tokens, as a front-end makes them: the chat template, then the
model's tokenizer; with the time this takes, which is the replay's own work.

:class:`ChatRenderer` is the :class:`~kvcache_exp.chat.policies.Renderer` the policies
measure prompts with. A policy renders the same messages several times while it looks
for what fits, so renderings are remembered within a conversation (:meth:`forget` at the
next one); the time spent rendering and tokenizing is added up for the turn CSV's
``render_ms`` and ``tokenize_ms``, and the benchmark reports it beside the TTFT.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvcache_exp.chat.source import Message
from kvcache_exp.chat.template import ChatTemplate, TemplateError, read_template_file
from kvcache_exp.engines.chat_vocab import ChatVocabulary


def load_template(vocab: ChatVocabulary, template_file: str | Path | None) -> ChatTemplate:
    """The template the replay renders with: ``chat_template_file`` when given, else the
    GGUF's own (an error naming both when the GGUF has none)."""
    if template_file:
        source, origin = read_template_file(template_file), f"chat_template_file {template_file}"
    else:
        found = vocab.chat_template()
        if not found:
            raise TemplateError(
                f"{vocab.model_path.name} has no chat template (tokenizer.chat_template); give "
                "one with chat_template_file"
            )
        source, origin = found, f"the GGUF's tokenizer.chat_template ({vocab.model_path.name})"
    return ChatTemplate(source, bos_token=vocab.bos_text, eos_token=vocab.eos_text, origin=origin)


class ChatRenderer:
    """Renders and tokenizes messages, remembering results and the time they took."""

    def __init__(self, template: ChatTemplate, vocab: ChatVocabulary, where: str = "") -> None:
        self.template = template
        self.vocab = vocab
        self.where = where
        self.render_s = 0.0
        self.tokenize_s = 0.0
        self._seen: dict[tuple[bool, tuple[tuple[str, str], ...]], list[int]] = {}
        self.origin = template.origin

    def forget(self, where: str = "") -> None:
        """Start a new conversation (``where`` names it in template errors)."""
        self._seen.clear()
        self.where = where

    def take_times(self) -> tuple[float, float]:
        """(render ms, tokenize ms) since the last call."""
        found = (self.render_s * 1000.0, self.tokenize_s * 1000.0)
        self.render_s = self.tokenize_s = 0.0
        return found

    def text(self, messages: Sequence[Message], generation: bool) -> str:
        start = time.perf_counter()
        try:
            return self.template.render(
                messages, add_generation_prompt=generation, where=self.where
            )
        finally:
            self.render_s += time.perf_counter() - start

    def tokens(self, text: str) -> list[int]:
        start = time.perf_counter()
        try:
            return self.vocab.tokenize(text)
        finally:
            self.tokenize_s += time.perf_counter() - start

    def _rendered(self, messages: Sequence[Message], generation: bool) -> list[int]:
        key = (generation, tuple((m.role, m.content) for m in messages))
        if key not in self._seen:
            self._seen[key] = self.tokens(self.text(messages, generation))
        return list(self._seen[key])

    def prompt(self, messages: Sequence[Message]) -> list[int]:
        """The tokens of ``messages`` with the generation prompt (a turn's prompt)."""
        return self._rendered(messages, True)

    def prefix(self, messages: Sequence[Message]) -> list[int]:
        """The tokens of ``messages`` without it."""
        return self._rendered(messages, False)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.vocab.detokenize(list(tokens))

    def part(self, text: str) -> list[int]:
        """The tokens of a part of a prompt (a reply), without BOS."""
        return self.vocab.tokenize_part(text)

    def close(self) -> None:
        self.vocab.close()


class ServerRenderer(ChatRenderer):
    """llama-server renders and tokenizes (``render: server``): the prompt's tokens are
    the ones its chat completions evaluate, found through its ``/apply-template`` and
    ``/tokenize`` (the requests' time is the rendering's and the tokenizing's)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.where = ""
        self.render_s = 0.0
        self.tokenize_s = 0.0
        self._seen = {}
        self.origin = "llama-server's own chat template (/apply-template)"

    def _rendered(self, messages: Sequence[Message], generation: bool) -> list[int]:
        key = (generation, tuple((m.role, m.content) for m in messages))
        if key not in self._seen:
            start = time.perf_counter()
            text = self.engine.apply_template([m.as_dict() for m in messages], generation)
            self.render_s += time.perf_counter() - start
            start = time.perf_counter()
            self._seen[key] = self.engine.chat_tokens(text)
            self.tokenize_s += time.perf_counter() - start
        return list(self._seen[key])

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.engine.detokenize(list(tokens))

    def part(self, text: str) -> list[int]:
        return self.engine.tokenize(text)

    def close(self) -> None:
        pass
