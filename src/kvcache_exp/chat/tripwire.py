"""The prefix tripwire: where a new prompt leaves the tokens the cache holds, and why.

An engine reuses the cached tokens up to the first one where the new prompt differs
(llama.cpp, llama-server, vLLM and Ollama alike); everything after that index is
computed again. After a turn the cache holds the previous prompt and the reply's tokens
as the model generated them. The tripwire compares the new prompt with that, and names
the first index where they differ, the text on both sides of it, and the cause:

* ``truncation``: the policy removed something this turn, and without that removal the
  prompt would have kept more of the cache;
* ``template``: the text of what the cache holds is not the start of the new prompt's
  text: the chat template rendered earlier turns differently this time (an empty
  thinking block only on the last assistant turn, reasoning stripped from the history,
  whitespace trimmed from a reply);
* ``tokenization``: the text is the same, the tokens are not: a reply re-tokenized from
  its text (``'.'`` + ``'\\n\\n'`` generated, ``'.\\n\\n'`` re-tokenized) or a merge across
  the boundary of a message;
* ``none``: the new prompt starts with everything the cache holds (or the cache holds
  more than the prompt, e.g. the reply's tokens beyond it): no break.

The comparison of texts uses the model's own detokenizer, special tokens included, on
both sides, so that a template's markers count as text and a token-level cut (context
shift) is compared like any other prompt. Pure logic: the tokens and the detokenizer
come from the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvcache_exp.prefix import common_prefix

NONE, TRUNCATION, TEMPLATE, TOKENIZATION = "none", "truncation", "template", "tokenization"
CAUSES: tuple[str, ...] = (NONE, TRUNCATION, TEMPLATE, TOKENIZATION)
#: Tokens of text shown on each side of a break.
CONTEXT_TOKENS = 8


@dataclass(frozen=True)
class Tripwire:
    """Where the new prompt leaves the cached tokens (``index`` None: it does not), the
    text before that index, the text after it on each side, and the cause."""

    index: int | None
    cause: str
    before: str = ""
    cached: str = ""
    prompt: str = ""

    def as_columns(self) -> dict[str, object]:
        """The turn CSV's tripwire columns."""
        return {
            "tripwire_index": -1 if self.index is None else self.index,
            "tripwire_cause": self.cause,
            "tripwire_before": self.before,
            "tripwire_cached": self.cached,
            "tripwire_prompt": self.prompt,
        }


def check(
    cached: Sequence[int],
    prompt: Sequence[int],
    *,
    removed: bool,
    untruncated: Callable[[], Sequence[int]],
    detokenize: Callable[[Sequence[int]], str],
) -> Tripwire:
    """The tripwire of a new ``prompt`` against the ``cached`` tokens.

    ``removed`` says whether the policy removed something this turn, and
    ``untruncated()`` gives the prompt had it not (only called when needed: it costs a
    rendering). ``detokenize`` renders tokens as text, special tokens included.
    """
    index = common_prefix(cached, prompt)
    if index >= len(cached) or index >= len(prompt):
        return Tripwire(None, NONE)
    lo = max(0, index - CONTEXT_TOKENS)
    shown = {
        "before": detokenize(cached[lo:index]),
        "cached": detokenize(cached[index : index + CONTEXT_TOKENS]),
        "prompt": detokenize(prompt[index : index + CONTEXT_TOKENS]),
    }
    whole = prompt
    if removed:
        whole = untruncated()
        if common_prefix(cached, whole) > index:
            return Tripwire(index, TRUNCATION, **shown)
    # The break is there without any truncation: the template or the tokenizer made it.
    # A reply cut inside a multi-byte character decodes with a replacement character.
    if detokenize(whole).startswith(detokenize(cached).rstrip("\ufffd")):
        return Tripwire(index, TOKENIZATION, **shown)
    return Tripwire(index, TEMPLATE, **shown)


def removed_span(
    cached: Sequence[int], prompt: Sequence[int], min_tokens: int
) -> tuple[int, int, int] | None:
    """The span a KV shift removes from the cache so that more of it matches ``prompt``.

    After the common prefix (``start``), the cache holds tokens the prompt no longer
    has, then (when context was removed from the middle) tokens the prompt continues
    with. The span is ``[start, end)`` with ``end`` the first cache position from which
    the next ``min_tokens`` tokens of the prompt follow (KoboldCpp's ContextShift and
    llama-server's ``--cache-reuse`` look for such chunks the same way). Returns
    ``(start, end, kept)``, ``kept`` being how many prompt tokens the shifted cache then
    holds (at most all but the last, which is always evaluated for its logits), or None
    when no such span exists.
    """
    start = common_prefix(cached, prompt)
    limit = len(prompt) - 1
    if start >= min(len(cached), limit) or min_tokens < 1:
        return None
    need = list(prompt[start : start + min_tokens])
    if len(need) < min_tokens:
        return None
    held = list(cached)
    for end in range(start + 1, len(held) - min_tokens + 1):
        if held[end] == need[0] and held[end : end + min_tokens] == need:
            kept = min(start + common_prefix(held[end:], prompt[start:]), limit)
            return (start, end, kept) if kept - start >= min_tokens else None
    return None
