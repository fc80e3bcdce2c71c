"""The truncation policies of chat front-ends: what each sends when a conversation no
longer fits the prompt budget.

Every policy gets the conversation so far (the system message, the completed turns as
they were sent, the new user message) and a :class:`Renderer` that turns messages into
the prompt's tokens, and returns the prompt it sends (:class:`Selection`). Each is a
small class with one job and a few parameters, and keeps what it decided last turn
(where its window starts), as a front-end does:

* ``none``: never removes anything; a prompt over the budget is an error (checked
  before any model loads, see :func:`kvcache_exp.measure.replay_job.check_fits`).
* ``drop_oldest``: keeps the system message and drops the oldest user/assistant pairs
  until the prompt fits (SillyTavern, LM Studio's rolling window, Ollama's chat
  truncation): once full, it drops one pair nearly every turn.
* ``drop_chunk``: when over the budget, drops the oldest pairs down to ``target`` times
  the budget, so that it happens rarely (front-ends that trim in chunks).
* ``truncate_middle``: keeps the system message, the first ``keep_first`` pairs and the
  latest pairs that fit (LM Studio's "truncate middle").
* ``context_shift``: token level, as llama.cpp, Ollama and KoboldCpp shift their
  context: keeps the first ``n_keep`` tokens (``system``: those of the system message)
  and discards half of the rest, as often as needed, wherever the cut falls.

A selection also says what the prompt would have been had the policy removed nothing
new this turn (``untruncated``): the prefix tripwire compares it with the cache to tell
a break the policy made from one the template or the tokenizer made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from kvcache_exp.chat.source import Message

#: A completed turn as it was sent: the user message and the reply in the history.
Pair = tuple[Message, Message]


class Renderer(Protocol):
    """Messages to prompt tokens, through the chat template and the tokenizer."""

    def prompt(self, messages: Sequence[Message]) -> list[int]:
        """The tokens of ``messages`` rendered with the generation prompt."""

    def prefix(self, messages: Sequence[Message]) -> list[int]:
        """The tokens of ``messages`` rendered without it (a prefix of a conversation)."""


class PolicyError(ValueError):
    """A turn that no truncation can fit into the budget (or that ``none`` would have to
    truncate); the message names the conversation and the turn."""


@dataclass(frozen=True)
class Selection:
    """The prompt a policy sends for one turn.

    ``removed`` says whether it removed something this turn; ``turns_dropped`` counts the
    completed turns left out (message-level policies) and ``tokens_discarded`` the
    tokens cut (``context_shift``), so far. ``untruncated`` gives the prompt had the
    policy removed nothing new this turn (the previous turn's window, plus what is new).
    """

    tokens: list[int]
    removed: bool
    turns_dropped: int
    tokens_discarded: int
    untruncated: Callable[[], list[int]]
    #: The messages sent (None: a token-level policy, whose prompt is no list of messages).
    messages: list[Message] | None = None


class Policy:
    """A truncation policy with its own state; :meth:`reset` before each conversation."""

    name: ClassVar[str]
    #: The parameters it takes, with their defaults.
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, budget: int, **params: Any) -> None:
        self.budget = int(budget)
        self.params = {**self.defaults, **params}
        self.reset()

    def reset(self) -> None:
        """Forget the previous conversation."""

    def select(
        self,
        system: Message | None,
        pairs: Sequence[Pair],
        user: Message,
        renderer: Renderer,
        where: str,
    ) -> Selection:
        """The prompt for ``user`` after the completed turns ``pairs``."""
        raise NotImplementedError

    def _too_long(self, where: str, tokens: int, why: str) -> PolicyError:
        return PolicyError(
            f"{where}: the prompt takes {tokens} tokens {why}, more than the budget of "
            f"{self.budget} tokens (conversations.budget_tokens)"
        )


def _messages(
    system: Message | None, pairs: Sequence[Pair], kept: Sequence[int], user: Message
) -> list[Message]:
    """The system message, the kept pairs in order, and the new user message."""
    found = [system] if system is not None else []
    for i in kept:
        found += pairs[i]
    return [*found, user]


class _Window(Policy):
    """A message-level policy: a window ``[start, len(pairs))`` of the completed turns
    (after ``fixed`` turns it always keeps), whose start only moves forward."""

    def reset(self) -> None:
        self.start = 0

    def fixed(self, pairs: Sequence[Pair]) -> list[int]:
        """The turns kept whatever the budget (none by default)."""
        return []

    def kept(self, pairs: Sequence[Pair], start: int) -> list[int]:
        head = self.fixed(pairs)
        return head + list(range(max(start, len(head)), len(pairs)))

    def advance(self, fits: Callable[[int], list[int] | None], start: int, n: int) -> int:
        """Where the window starts this turn, from ``start``; ``fits(start)`` returns the
        prompt when it fits."""
        raise NotImplementedError

    def select(
        self,
        system: Message | None,
        pairs: Sequence[Pair],
        user: Message,
        renderer: Renderer,
        where: str,
    ) -> Selection:
        def messages(start: int) -> list[Message]:
            return _messages(system, pairs, self.kept(pairs, start), user)

        def prompt(start: int) -> list[int]:
            return renderer.prompt(messages(start))

        previous = self.start
        start = self.advance(prompt, previous, len(pairs))
        tokens = prompt(start)
        if len(tokens) > self.budget:
            why = "even after dropping every turn it may drop"
            if self.name == "none":
                why = "(policy none never truncates)"
            raise self._too_long(where, len(tokens), why)
        self.start = start
        return Selection(
            tokens=tokens,
            removed=self.kept(pairs, start) != self.kept(pairs, previous),
            turns_dropped=len(pairs) - len(self.kept(pairs, start)),
            tokens_discarded=0,
            untruncated=lambda: prompt(previous),
            messages=messages(start),
        )


class NoTruncation(_Window):
    """``none``: every turn, always."""

    name = "none"

    def advance(self, fits: Callable[[int], list[int]], start: int, n: int) -> int:
        return start


class DropOldest(_Window):
    """``drop_oldest``: drop the oldest pair until the prompt fits the budget."""

    name = "drop_oldest"

    def advance(self, fits: Callable[[int], list[int]], start: int, n: int) -> int:
        while start < n and len(fits(start)) > self.budget:
            start += 1
        return start


class DropChunk(_Window):
    """``drop_chunk``: once over the budget, drop pairs down to ``target`` × budget."""

    name = "drop_chunk"
    defaults: ClassVar[dict[str, Any]] = {"target": 0.5}

    def advance(self, fits: Callable[[int], list[int]], start: int, n: int) -> int:
        if len(fits(start)) <= self.budget:
            return start
        goal = math.floor(float(self.params["target"]) * self.budget)
        while start < n and len(fits(start)) > goal:
            start += 1
        return start


class TruncateMiddle(DropOldest):
    """``truncate_middle``: keep the first ``keep_first`` pairs and the latest that fit."""

    name = "truncate_middle"
    defaults: ClassVar[dict[str, Any]] = {"keep_first": 1}

    def fixed(self, pairs: Sequence[Pair]) -> list[int]:
        return list(range(min(int(self.params["keep_first"]), len(pairs))))

    def advance(self, fits: Callable[[int], list[int]], start: int, n: int) -> int:
        return super().advance(fits, max(start, min(int(self.params["keep_first"]), n)), n)


class ContextShift(Policy):
    """``context_shift``: keep ``n_keep`` tokens, discard half of the rest until the
    prompt fits. The prompt is always the first ``n_keep`` tokens of the whole
    conversation's tokens and a tail of them from ``cut``, which only moves forward."""

    name = "context_shift"
    defaults: ClassVar[dict[str, Any]] = {"n_keep": "system"}

    def reset(self) -> None:
        self.cut = 0
        self.keep: int | None = None

    def _keep(self, system: Message | None, stream: list[int], renderer: Renderer) -> int:
        n_keep = self.params["n_keep"]
        if n_keep == "system":
            if system is None:
                return 0
            own = renderer.prefix([system])
            return next(
                (i for i, (a, b) in enumerate(zip(own, stream, strict=False)) if a != b),
                min(len(own), len(stream)),
            )
        return int(n_keep)

    def select(
        self,
        system: Message | None,
        pairs: Sequence[Pair],
        user: Message,
        renderer: Renderer,
        where: str,
    ) -> Selection:
        stream = renderer.prompt(_messages(system, pairs, range(len(pairs)), user))
        if self.keep is None:
            self.keep = self._keep(system, stream, renderer)
            if self.keep >= self.budget:
                raise self._too_long(where, self.keep, f"in its first n_keep={self.keep}")
        keep = self.keep
        previous = max(self.cut, keep)

        def window(cut: int) -> list[int]:
            return stream[:keep] + stream[cut:]

        cut = previous
        while len(window(cut)) > self.budget:
            cut += max((len(window(cut)) - keep) // 2, 1)
        self.cut = cut
        return Selection(
            tokens=window(cut),
            removed=cut > previous,
            turns_dropped=0,
            tokens_discarded=cut - keep if cut > keep else 0,
            untruncated=lambda: window(previous),
        )


#: The policies by name.
POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (NoTruncation, DropOldest, DropChunk, TruncateMiddle, ContextShift)
}


def make_policy(entry: Mapping[str, Any], budget: int) -> Policy:
    """The policy of a ``conversations.policies`` entry (``name``, optional ``label`` and
    the policy's own parameters)."""
    name = entry["name"]
    params = {k: v for k, v in entry.items() if k not in ("name", "label")}
    return POLICIES[name](budget, **params)


def label(entry: Mapping[str, Any]) -> str:
    """A policy entry's name in file names and tables: its ``label``, else its name."""
    return str(entry.get("label") or entry["name"])
