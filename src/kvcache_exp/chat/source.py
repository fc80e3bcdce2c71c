"""Conversations to replay: read from a JSON Lines file, or the small built-in set.

A file holds one conversation per line, in either of the two forms chat data sets use:

* OpenAI's ``messages``: ``{"messages": [{"role": "system", "content": "..."},
  {"role": "user", ...}, {"role": "assistant", ...}, ...]}``;
* ShareGPT's ``conversations``: ``{"conversations": [{"from": "human", "value": "..."},
  {"from": "gpt", ...}, ...]}`` (``system``, ``human``/``user``, ``gpt``/``assistant``).

An optional system message comes first; then user and assistant messages alternate,
starting with a user message (the last one may be a user message without a reply). An
``id`` is optional. Every problem is reported with the file and the line, before any
model is loaded: a replay that stops after an hour on line 9,000 helps nobody.

The built-in set (:func:`builtin_conversations`) is generated from the project's own
deterministic prose (:mod:`kvcache_exp.measure.text`), so that the default run needs no
data file and gives the same conversations on every machine.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvcache_exp.measure.text import words

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"
#: ShareGPT's speaker names, as the OpenAI roles they stand for.
SHAREGPT_ROLES = {
    "system": SYSTEM,
    "human": USER,
    "user": USER,
    "gpt": ASSISTANT,
    "assistant": ASSISTANT,
    "chatgpt": ASSISTANT,
}
OPENAI_ROLES = (SYSTEM, USER, ASSISTANT)

#: The built-in set's system message.
BUILTIN_SYSTEM = "You are a helpful assistant. Answer in a few plain sentences."
#: The built-in set's name (its CSVs' set name).
BUILTIN = "builtin"


class ConversationError(ValueError):
    """A conversation file cannot be replayed; the message names the file and the line."""


@dataclass(frozen=True)
class Message:
    """One chat message, as the chat template sees it."""

    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Turn:
    """A user message and the reply recorded after it (None: no reply in the file)."""

    user: Message
    reply: Message | None


@dataclass(frozen=True)
class Conversation:
    """One conversation: where it comes from (``line`` 0 for a generated one), its id,
    an optional system message and its turns."""

    id: str
    source: str
    line: int
    system: Message | None
    turns: tuple[Turn, ...]

    @property
    def where(self) -> str:
        """The conversation, for messages: ``chats.jsonl, line 3 (id 'a7')``."""
        at = f"{self.source}, line {self.line}" if self.line else self.source
        return f"{at} (id {self.id!r})"


# --------------------------------------------------------------------------- reading


def _content(value: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of ``{"type": "text"}`` parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in value
    ):
        return "".join(p["text"] for p in value)
    raise ConversationError(
        f"{where}: the content must be a string (or a list of text parts), got "
        f"{json.dumps(value)[:80]}"
    )


def _messages(record: dict[str, Any], where: str) -> list[Message]:
    """The messages of one line, in either form, with their roles checked."""
    forms = [key for key in ("messages", "conversations") if key in record]
    if len(forms) != 1:
        raise ConversationError(
            f"{where}: a line holds an object with either `messages` (OpenAI form) or "
            f"`conversations` (ShareGPT form); found keys {sorted(record)}"
        )
    items = record[forms[0]]
    if not isinstance(items, list) or not items:
        raise ConversationError(f"{where}: `{forms[0]}` must be a non-empty list of messages")
    found = []
    for i, item in enumerate(items):
        at = f"{where}, message {i + 1}"
        if not isinstance(item, dict):
            raise ConversationError(f"{at}: a message must be an object, got {item!r:.60}")
        if forms[0] == "messages":
            role = item.get("role")
            if role not in OPENAI_ROLES:
                raise ConversationError(
                    f"{at}: unknown role {role!r} (known: {', '.join(OPENAI_ROLES)})"
                )
            found.append(Message(role, _content(item.get("content"), at)))
        else:
            speaker = item.get("from")
            if speaker not in SHAREGPT_ROLES:
                raise ConversationError(
                    f"{at}: unknown speaker {speaker!r} in `from` (known: "
                    f"{', '.join(SHAREGPT_ROLES)})"
                )
            found.append(Message(SHAREGPT_ROLES[speaker], _content(item.get("value"), at)))
    return found


def _turns(messages: list[Message], where: str) -> tuple[Message | None, tuple[Turn, ...]]:
    """The system message and the turns; the roles must alternate from a user message."""
    system = messages[0] if messages[0].role == SYSTEM else None
    rest = messages[1:] if system else messages
    turns = []
    for i, message in enumerate(rest):
        expected = USER if i % 2 == 0 else ASSISTANT
        if message.role != expected:
            index = i + 1 + (1 if system else 0)
            raise ConversationError(
                f"{where}, message {index}: expected the {expected}'s message, got a "
                f"{message.role} message "
                "(after an optional system message, user and assistant messages alternate, "
                "starting with a user message)"
            )
        if expected == USER:
            turns.append(Turn(message, None))
        else:
            turns[-1] = Turn(turns[-1].user, message)
    if not turns:
        raise ConversationError(f"{where}: the conversation has no user message")
    return system, tuple(turns)


def parse_line(text: str, source: str, line: int) -> Conversation:
    """One line of a conversation file."""
    where = f"{source}, line {line}"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConversationError(f"{where}: not JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(record, dict):
        raise ConversationError(f"{where}: expected a JSON object, got {type(record).__name__}")
    system, turns = _turns(_messages(record, where), where)
    conv_id = record.get("id", line)
    if not isinstance(conv_id, str | int) or isinstance(conv_id, bool):
        raise ConversationError(f"{where}: `id` must be a string or an integer")
    return Conversation(str(conv_id), source, line, system, turns)


def read_conversations(path: str | os.PathLike[str]) -> list[Conversation]:
    """Every conversation of a JSON Lines file, checked (blank lines are skipped).

    Raises :class:`ConversationError` naming the file and the line: a file that does not
    exist or is empty, a line that is not JSON, an unknown role, roles out of order, or
    two conversations with the same id.
    """
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as err:
        raise ConversationError(f"{file}: no such conversation file") from err
    except UnicodeDecodeError as err:
        raise ConversationError(f"{file}: not UTF-8 text ({err.reason})") from err
    found: list[Conversation] = []
    seen: dict[str, int] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        conversation = parse_line(text, file.name, number)
        if conversation.id in seen:
            raise ConversationError(
                f"{file.name}, line {number}: id {conversation.id!r} was already used on line "
                f"{seen[conversation.id]}"
            )
        seen[conversation.id] = number
        found.append(conversation)
    if not found:
        raise ConversationError(f"{file}: the file holds no conversation (it is empty)")
    return found


# --------------------------------------------------------------------------- sets and shards


def set_name(conversations_file: str | os.PathLike[str] | None) -> str:
    """The name of a conversation set in file names: the file's stem, or ``builtin``."""
    if conversations_file is None:
        return BUILTIN
    stem = Path(conversations_file).name.split(".")[0]
    cleaned = "".join(c if c.isalnum() or c in "-" else "-" for c in stem).strip("-")
    return cleaned or "conversations"


def shard_names(name: str, count: int, shard_size: int) -> list[str]:
    """The job names of a set of ``count`` conversations cut into shards of at most
    ``shard_size``: the set's own name when one shard holds them all, else
    ``{name}.1``, ``{name}.2``, ..."""
    shards = max(1, math.ceil(count / shard_size))
    return [name] if shards == 1 else [f"{name}.{k}" for k in range(1, shards + 1)]


def shard(
    conversations: Sequence[Conversation], job_set: str, shard_size: int
) -> list[Conversation]:
    """The conversations of one job: all of them, or shard ``k`` of ``{name}.{k}``."""
    _, dot, number = job_set.rpartition(".")
    if not dot or not number.isdigit():
        return list(conversations)
    k = int(number)
    part = list(conversations[(k - 1) * shard_size : k * shard_size])
    if k < 1 or not part:
        raise ConversationError(f"{job_set}: no such shard (shards of {shard_size})")
    return part


# --------------------------------------------------------------------------- the built-in set


def _take(stream: Iterator[str], n: int) -> str:
    """Whole sentences of ``stream``, at least ``n`` words of them."""
    taken: list[str] = []
    for word in stream:
        taken.append(word)
        if len(taken) >= n and word.endswith((".", "?")):
            break
    return " ".join(taken)


def builtin_conversations(
    count: int, turns: int, user_words: int, reply_words: int, *, seed: int = 17
) -> list[Conversation]:
    """``count`` generated conversations of ``turns`` turns each, with a system message.

    Each user message is ``user_words`` words of the project's prose followed by a
    question; each recorded reply is ``reply_words`` words (sent as history only with
    recorded replies). Same arguments, same conversations, on every machine.
    """
    found = []
    for c in range(count):
        prose = words(seed + 100 * c)
        questions = words(seed + 100 * c + 1, question=True)
        replies = words(seed + 100 * c + 2)
        made = []
        for _ in range(turns):
            user = f"{_take(prose, user_words)} {_take(questions, 1)}"
            reply = _take(replies, reply_words)
            made.append(Turn(Message(USER, user), Message(ASSISTANT, reply)))
        found.append(
            Conversation(
                f"{BUILTIN}-{c + 1}", BUILTIN, 0, Message(SYSTEM, BUILTIN_SYSTEM), tuple(made)
            )
        )
    return found
