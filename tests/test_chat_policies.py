"""The truncation policies, the prefix tripwire and the shift's span, on a small
word-level renderer (every message: a role token, one token per word, an end token),
and the tripwire's tokenization cause on the default model's real tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from kvcache_exp.chat import tripwire
from kvcache_exp.chat.policies import POLICIES, PolicyError, make_policy
from kvcache_exp.chat.source import ASSISTANT, SYSTEM, USER, Message

ROLES = {SYSTEM: 1, USER: 2, ASSISTANT: 3}
END = 4


class WordRenderer:
    """A chat template and tokenizer in miniature: ``<role> words... <end>``, and the
    assistant's role token as the generation prompt; words get ids from 100 in order of
    first sight."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def word(self, w: str) -> int:
        return self.ids.setdefault(w, 100 + len(self.ids))

    def prefix(self, messages: Sequence[Message]) -> list[int]:
        out = []
        for m in messages:
            out += [ROLES[m.role], *(self.word(w) for w in m.content.split()), END]
        return out

    def prompt(self, messages: Sequence[Message]) -> list[int]:
        return [*self.prefix(messages), ROLES[ASSISTANT]]

    def detokenize(self, tokens: Sequence[int]) -> str:
        names = {v: k for k, v in self.ids.items()} | {1: "S:", 2: "U:", 3: "A:", 4: "|"}
        return " ".join(names[t] for t in tokens)


SYSTEM_MSG = Message(SYSTEM, "be brief")


def turn(i: int, words: int = 8) -> tuple[Message, Message]:
    """A user message and a reply, each of ``words`` distinct words."""
    user = Message(USER, " ".join(f"u{i}w{k}" for k in range(words)))
    reply = Message(ASSISTANT, " ".join(f"a{i}w{k}" for k in range(words)))
    return user, reply


def replay(entry: dict, budget: int, turns: int = 8, system: Message | None = SYSTEM_MSG):
    """The selections of a policy over a conversation of ``turns`` turns."""
    renderer = WordRenderer()
    policy = make_policy(entry, budget)
    pairs, found = [], []
    for i in range(turns):
        user, reply = turn(i)
        found.append(policy.select(system, pairs, user, renderer, f"turn {i + 1}"))
        pairs.append((user, reply))
    return renderer, found


def test_every_policy_fits_the_budget():
    for name in POLICIES:
        if name == "none":
            continue
        _, chosen = replay({"name": name}, budget=50)
        assert all(len(c.tokens) <= 50 for c in chosen), name
        assert any(c.removed for c in chosen), name


def test_drop_oldest_keeps_the_system_message_and_drops_one_turn_at_a_time():
    renderer, chosen = replay({"name": "drop_oldest"}, budget=50)
    system = renderer.prefix([SYSTEM_MSG])
    for c in chosen:
        assert c.tokens[: len(system)] == system
    dropped = [c.turns_dropped for c in chosen]
    assert dropped == sorted(dropped) and dropped[-1] > 0
    # Once full, every turn drops one more pair: a miss on every turn.
    full = dropped.index(next(d for d in dropped if d))
    assert all(c.removed for c in chosen[full:])
    assert [b - a for a, b in zip(dropped[full:], dropped[full + 1 :], strict=False)] == [1] * (
        len(dropped) - full - 1
    )


def test_drop_chunk_drops_to_its_target_and_so_more_rarely():
    _, oldest = replay({"name": "drop_oldest"}, budget=80, turns=12)
    _, chunk = replay({"name": "drop_chunk", "target": 0.4}, budget=80, turns=12)
    assert 0 < sum(c.removed for c in chunk) < sum(c.removed for c in oldest)
    for c in chunk:
        if c.removed:
            assert len(c.tokens) <= 0.4 * 80


def test_truncate_middle_keeps_the_first_turns():
    renderer, chosen = replay({"name": "truncate_middle", "keep_first": 1}, budget=50)
    head = renderer.prefix([SYSTEM_MSG, *turn(0)])
    assert all(c.tokens[: len(head)] == head for c in chosen[1:])
    assert chosen[-1].turns_dropped > 0


def test_context_shift_keeps_n_keep_tokens_and_discards_half_of_the_rest():
    renderer, chosen = replay({"name": "context_shift", "n_keep": "system"}, budget=50)
    keep = len(renderer.prefix([SYSTEM_MSG]))
    first = next(c for c in chosen if c.removed)
    stream = first.untruncated()
    # From a prompt over the budget, half of what follows the kept tokens is gone (once
    # or more, until it fits), wherever the cut falls.
    assert first.tokens[:keep] == stream[:keep]
    assert first.tokens[keep:] == stream[keep + first.tokens_discarded :]
    assert first.tokens_discarded >= (len(stream) - keep) // 2 or len(stream) <= 50
    _, fixed = replay({"name": "context_shift", "n_keep": 3}, budget=50)
    assert all(c.tokens[:3] == [1, 100, 101] for c in fixed)


def test_none_refuses_a_conversation_over_the_budget():
    with pytest.raises(
        PolicyError, match=r"turn \d: the prompt takes \d+ tokens \(policy none never truncates\)"
    ):
        replay({"name": "none"}, budget=50)
    _, chosen = replay({"name": "none"}, budget=500)
    assert not any(c.removed for c in chosen)


def test_a_turn_that_nothing_fits_is_an_error():
    with pytest.raises(PolicyError, match="turn 1: .* even after dropping every turn it may drop"):
        replay({"name": "drop_oldest"}, budget=8)


# --------------------------------------------------------------------------- tripwire


def test_the_tripwire_names_truncation_and_template_breaks():
    renderer, chosen = replay({"name": "drop_oldest"}, budget=50)
    pairs = [turn(i) for i in range(8)]
    held: list[int] = []
    causes = []
    for i, c in enumerate(chosen):
        found = tripwire.check(
            held,
            c.tokens,
            removed=c.removed,
            untruncated=c.untruncated,
            detokenize=renderer.detokenize,
        )
        causes.append(found.cause)
        held = [*c.tokens, *(renderer.word(w) for w in pairs[i][1].content.split())]
    first = causes.index(tripwire.TRUNCATION)
    assert set(causes[:first]) == {tripwire.NONE} and set(causes[first:]) == {tripwire.TRUNCATION}
    # The same prompt, but the template rendered the cached reply differently.
    edited = [*held[:-1], renderer.word("edited")]
    found = tripwire.check(
        edited, held + [END], removed=False, untruncated=lambda: [], detokenize=renderer.detokenize
    )
    assert (found.index, found.cause) == (len(held) - 1, tripwire.TEMPLATE)


def test_a_reply_re_tokenized_differently_is_a_tokenization_break(model_path):
    """'.' + '\\n' + '\\n' generated, '.\\n\\n' rendered and re-tokenized: the same text,
    other tokens (the default model's real tokenizer)."""
    from kvcache_exp.engines.chat_vocab import ChatVocabulary

    vocab = ChatVocabulary(model_path)
    try:
        head = vocab.tokenize("<|im_start|>assistant\nThe end")
        generated = [
            *vocab.tokenize_part("."),
            *vocab.tokenize_part("\n"),
            *vocab.tokenize_part("\n"),
        ]
        held = [*head, *generated]
        prompt = vocab.tokenize(
            "<|im_start|>assistant\nThe end.\n\n<|im_end|>\n<|im_start|>user\nMore"
        )
        assert prompt[: len(held)] != held
        found = tripwire.check(
            held, prompt, removed=False, untruncated=lambda: prompt, detokenize=vocab.detokenize
        )
    finally:
        vocab.close()
    # '.' is the same token on both sides: the break is at the newlines.
    assert (found.cause, found.index) == (tripwire.TOKENIZATION, len(head) + 1)
    assert found.before.endswith("The end.") and found.cached == "\n\n"
    assert found.prompt.startswith("\n\n<|im_end|>")


def test_the_shift_finds_the_removed_span():
    cached = [1, 2, 3, 10, 11, 12, 20, 21, 22, 23, 24, 30]
    prompt = [1, 2, 3, 20, 21, 22, 23, 24, 40, 41]
    assert tripwire.removed_span(cached, prompt, 3) == (3, 6, 8)
    assert tripwire.removed_span(cached, prompt, 6) is None  # the kept span is too short
    assert tripwire.removed_span(cached, [1, 2, 3, 4], 1) is None  # nothing to move
    assert tripwire.removed_span([1, 2, 3], [1, 2, 3, 4], 1) is None  # a plain extension
