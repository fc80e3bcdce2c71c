"""The model's chat template, rendered as the engines render it.

A chat front-end never sends messages to a model: it renders them into one text with
the model's chat template, a Jinja2 program stored in the GGUF as
``tokenizer.chat_template`` (or one the user gives, ``chat_template_file``), and the
engine tokenizes that text. Whether a new turn's prompt starts with the tokens of the
previous one depends on that program, so it is rendered here the way llama-cpp-python
(``llama_chat_format.Jinja2ChatFormatter``) and llama-server render it:

* a sandboxed environment (a template is code from a model file), with
  ``trim_blocks`` and ``lstrip_blocks`` and the loop controls, as Hugging Face's
  ``apply_chat_template`` sets up;
* the variables they pass: ``messages`` (``role``/``content`` mappings),
  ``bos_token`` and ``eos_token`` (the texts of the model's own special tokens),
  ``add_generation_prompt`` (true for a prompt that asks for the assistant's reply),
  ``raise_exception(message)`` and ``strftime_now(format)``; ``tojson`` keeps non-ASCII
  characters, as both do; a ``{% generation %}`` block renders its content.

A template that does not parse, or that refuses a conversation (``raise_exception``, an
undefined variable, a sandbox violation), raises :class:`TemplateError` with its origin,
before anything is measured.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox

from kvcache_exp.chat.source import Message


class TemplateError(ValueError):
    """A chat template that cannot be loaded, or that refuses to render a conversation."""


class _Refused(Exception):
    """Raised by the template's own ``raise_exception``."""


class _Generation(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (Hugging Face's marker of the assistant's
    tokens for training masks) renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise _Refused(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class ChatTemplate:
    """A chat template ready to render; ``origin`` says where it came from (messages)."""

    def __init__(self, source: str, *, bos_token: str, eos_token: str, origin: str) -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.origin = origin
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_Generation, jinja2.ext.loopcontrols],
            undefined=jinja2.Undefined,
        )
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        try:
            self._program = env.from_string(source)
        except jinja2.TemplateSyntaxError as err:
            raise TemplateError(
                f"the chat template from {origin} does not parse: {err.message} (template "
                f"line {err.lineno})"
            ) from err

    def render(
        self, messages: Sequence[Message], *, add_generation_prompt: bool, where: str = ""
    ) -> str:
        """The text of ``messages``; ``where`` names the conversation in an error."""
        try:
            return self._program.render(
                messages=[m.as_dict() for m in messages],
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=add_generation_prompt,
            )
        except _Refused as err:
            reason = f"refused it: {err}"
        except (jinja2.TemplateError, TypeError, ValueError) as err:
            reason = f"failed: {type(err).__name__}: {err}"
        at = f" for {where}" if where else ""
        raise TemplateError(f"the chat template from {self.origin} {reason}{at}")


def read_template_file(path: str | os.PathLike[str]) -> str:
    """The text of ``chat_template_file``: a Jinja2 template, or a JSON file holding it
    under ``chat_template`` (as a Hugging Face ``tokenizer_config.json`` does)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as err:
        raise TemplateError(f"chat_template_file: cannot read {file}: {err.strerror}") from err
    if file.suffix == ".json":
        try:
            found = json.loads(text).get("chat_template")
        except (ValueError, AttributeError) as err:
            raise TemplateError(f"chat_template_file: {file} is not a JSON object") from err
        if not isinstance(found, str):
            raise TemplateError(f"chat_template_file: {file} has no `chat_template` string")
        return found
    if not text.strip():
        raise TemplateError(f"chat_template_file: {file} is empty")
    return text
