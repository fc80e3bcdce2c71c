"""Prompts of exact token counts: context A, context B and the query Q.

Why this is careful: the experiment's whole point is which tokens the KV cache can
reuse. The hit prompt ``[A, B, Q]`` must start with exactly the warm-up's tokens
``[A, B]``, the miss prompt ``[B, Q]`` must share *nothing* with the cached prefix
(a common BOS token or header would turn a miss into a partial hit), and the text we
record must tokenize back to exactly the tokens we sent. Every segment is therefore
built word by word, each word with its leading space, so that segment borders fall on
the tokenizer's pre-token borders; the result is then checked against the real
tokenizer rather than assumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kvcache_exp.measure import text as textgen

Tokenize = Callable[[str], list[int]]

#: Seeds of the word streams; distinct so that S, A, B and Q never repeat each other.
_SEED_A, _SEED_B, _SEED_Q, _SEED_S = 1, 2, 3, 4
#: How far apart the seeds of two prompt variants are (so that no stream repeats another).
_VARIANT_SEEDS = 100
#: Words tried to fill the last one or two tokens of a segment.
_FILLERS = ("the", "and", "a", "of", "to", "in", "it", "was", "on", "at")


class PromptError(ValueError):
    """The prompts asked for cannot be built (too little text, or a tokenizer quirk)."""


@dataclass(frozen=True)
class Segment:
    """A piece of prompt: its text and the exact tokens that text tokenizes to."""

    text: str
    tokens: tuple[int, ...]


EMPTY = Segment(text="", tokens=())


@dataclass(frozen=True)
class PromptSet:
    """The three prompts of one configuration, as token lists and as text.

    ``s`` is an optional kept prefix (a system prompt) before A: with it, A is removed
    from the middle of the prompt, as chat front-ends do, and every condition starts
    from the cached S.
    """

    a: Segment
    b: Segment
    q: Segment
    s: Segment = EMPTY

    @property
    def warmup(self) -> list[int]:
        return [*self.s.tokens, *self.a.tokens, *self.b.tokens]

    @property
    def hit(self) -> list[int]:
        return [*self.s.tokens, *self.a.tokens, *self.b.tokens, *self.q.tokens]

    @property
    def miss(self) -> list[int]:
        return [*self.s.tokens, *self.b.tokens, *self.q.tokens]

    @property
    def removed(self) -> tuple[int, int]:
        """The positions of A in the warm-up: what a miss removes."""
        return len(self.s.tokens), len(self.s.tokens) + len(self.a.tokens)

    def text(self, name: str) -> str:
        """The text of prompt ``name`` (``warmup``, ``hit`` or ``miss``)."""
        parts = {
            "warmup": (self.s, self.a, self.b),
            "hit": (self.s, self.a, self.b, self.q),
            "miss": (self.s, self.b, self.q),
        }[name]
        return "".join(p.text for p in parts)

    def tokens(self, name: str) -> list[int]:
        """The tokens of prompt ``name``."""
        return {"warmup": self.warmup, "hit": self.hit, "miss": self.miss}[name]


#: A word wider than this many tokens is a run of text without spaces, which may be cut.
_LONG_RUN = 8


def _leading_part(word: str, room: int, tokenize: Tokenize) -> str:
    """The longest leading part of ``word`` that is at most ``room`` tokens (or '')."""
    for end in range(len(word) - 1, 0, -1):
        if len(tokenize(" " + word[:end])) <= room:
            return word[:end]
    return ""


def _build_segment(
    name: str,
    n_tokens: int,
    words: Iterator[str],
    tokenize: Tokenize,
    avoid_first: int | None,
    need_note: str,
) -> Segment:
    """Take words from ``words`` until they make exactly ``n_tokens`` tokens.

    Words are kept whole, except a long run of text without spaces (Chinese, Japanese,
    Thai write whole sentences that way): when it would overshoot, its longest leading
    part that fits is taken, cut between characters. When the next word would overshoot
    otherwise, single-token filler words close the gap. ``avoid_first`` is a token the
    segment must not start with.
    """
    pieces: list[str] = []
    count = 0
    fillers = [f for f in _FILLERS if len(tokenize(" " + f)) == 1]
    for word in words:
        if count == n_tokens:
            break
        piece = " " + word
        width = len(tokenize(piece))
        if not pieces and avoid_first is not None and tokenize(piece)[0] == avoid_first:
            continue
        if count + width <= n_tokens:
            pieces.append(piece)
            count += width
            continue
        if width > _LONG_RUN:
            head = _leading_part(word, n_tokens - count, tokenize)
            if head:
                pieces.append(" " + head)
                count += len(tokenize(" " + head))
                continue
        if fillers:
            # Too wide: close the remaining gap with one-token words.
            while count < n_tokens:
                pieces.append(" " + fillers[count % len(fillers)])
                count += 1
    if count != n_tokens:
        raise PromptError(
            f"the text is too short for {name}: it gave {count} of the {n_tokens} tokens needed"
            f"{need_note}"
        )
    text = "".join(pieces)
    tokens = tokenize(text)
    if len(tokens) != n_tokens:
        raise PromptError(
            f"{name}: {n_tokens} tokens were assembled word by word, but the tokenizer reads "
            f"the joined text as {len(tokens)} tokens; this tokenizer merges across words"
        )
    return Segment(text=text, tokens=tuple(tokens))


def build_prompts(
    tokenize: Tokenize,
    size_a: int,
    size_b: int,
    size_q: int,
    *,
    source_text: str | None = None,
    avoid_q_first: int | None = None,
    size_s: int = 0,
    variant: int = 0,
    variants: int = 1,
) -> PromptSet:
    """Build S, A, B and Q of exactly ``size_s``, ``size_a``, ``size_b`` and ``size_q``
    tokens (S, the kept prefix, is empty by default).

    ``tokenize`` must not add a BOS token. With ``source_text`` the words come from a
    user's text, consumed in order (S, A, B, then Q); otherwise from the project's
    deterministic prose. ``avoid_q_first`` keeps Q from starting with the token the
    model would generate after ``[S, A, B]``, which would let a hit reuse one token of Q.
    ``variant`` (of ``variants``) picks one of several distinct prompts of the same sizes:
    other seeds of the prose, or the text file read from the start of its
    ``variant``-th of ``variants`` parts; variant 0 is the seed's prompt.
    """
    note = ""
    if source_text is not None:
        stream = textgen.words_from_text(source_text, variant, variants)
        streams = (stream, stream, stream, stream)
        parts = "S, A, B and Q" if size_s else "A, B and Q"
        note = (
            f" ({parts} need {size_s + size_a + size_b + size_q} tokens in all, taken "
            "in order from the prompt text file: give a longer text)"
        )
    else:
        offset = _VARIANT_SEEDS * variant
        streams = (
            textgen.words(_SEED_S + offset),
            textgen.words(_SEED_A + offset),
            textgen.words(_SEED_B + offset),
            textgen.words(_SEED_Q + offset, question=True),
        )
    s = (
        _build_segment("kept prefix S", size_s, streams[0], tokenize, None, note)
        if size_s
        else EMPTY
    )
    a = _build_segment("context A", size_a, streams[1], tokenize, None, note)
    b = _build_segment("context B", size_b, streams[2], tokenize, a.tokens[0], note)
    q = _build_segment("query Q", size_q, streams[3], tokenize, avoid_q_first, note)
    prompts = PromptSet(a=a, b=b, q=q, s=s)
    check_prompts(prompts, tokenize)
    return prompts


def check_prompts(prompts: PromptSet, tokenize: Tokenize) -> None:
    """Check the properties the experiment relies on; raise PromptError if one fails."""
    for name in ("warmup", "hit", "miss"):
        if tokenize(prompts.text(name)) != prompts.tokens(name):
            raise PromptError(f"the {name} prompt's text does not tokenize back to its tokens")
    warm = prompts.warmup  # the hit starts with it by construction (PromptSet.hit)
    kept = len(prompts.s.tokens)
    if prompts.miss[kept] == warm[kept]:
        raise PromptError(
            "the miss prompt shares its first token after the kept prefix with the warm-up"
        )


def read_source_text(path: str | Path) -> str:
    """Read a user's text file for the prompts, with errors that name the problem."""
    p = Path(path)
    if not p.is_file():
        raise PromptError(f"prompt text file {p} does not exist")
    try:
        content = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(f"prompt text file {p} cannot be read: {exc}") from exc
    if not content.strip():
        raise PromptError(f"prompt text file {p} is empty")
    return content
