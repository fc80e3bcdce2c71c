"""Deterministic natural-language text for the prompts.

The experiment needs contexts A and B that read like the turns of a real conversation
(random token ids would put the model in an unusual regime) yet are identical on every
machine and every run, with no data file to download. A small seeded grammar does both.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

_SUBJECTS = (
    "the engineer",
    "a gardener",
    "the old captain",
    "my neighbour",
    "the young doctor",
    "a quiet student",
    "the baker",
    "our teacher",
    "the river guide",
    "a travelling musician",
    "the librarian",
    "a farmer from the valley",
    "the night nurse",
    "the mayor",
    "a painter",
)
_VERBS = (
    "carried",
    "described",
    "repaired",
    "planted",
    "noticed",
    "collected",
    "painted",
    "measured",
    "followed",
    "remembered",
    "explained",
    "visited",
    "cleaned",
    "ordered",
    "borrowed",
    "finished",
    "opened",
    "studied",
    "counted",
    "built",
)
_OBJECTS = (
    "a wooden table",
    "the broken clock",
    "three small boxes",
    "the long letter",
    "a basket of apples",
    "the map of the harbour",
    "an old bicycle",
    "the garden wall",
    "a pair of boots",
    "the kitchen window",
    "a heavy suitcase",
    "the village bridge",
    "a bundle of papers",
    "the green door",
    "a bottle of ink",
    "the empty barn",
)
_PLACES = (
    "before breakfast",
    "near the station",
    "after the storm",
    "in the morning",
    "on a cold evening",
    "behind the school",
    "during the market",
    "by the lake",
    "at the end of the street",
    "under the grey sky",
    "beside the church",
    "in the spring",
)
_CONNECTIVES = (
    "Later",
    "Meanwhile",
    "After that",
    "The next day",
    "Soon",
    "Without a word",
    "Once again",
    "In the end",
    "At first",
    "Still",
)
_QUESTIONS = (
    "What did the engineer repair before breakfast",
    "Who visited the village bridge after the storm",
    "Where was the map of the harbour kept",
    "Why did the baker open the green door",
    "How many boxes did the student carry to the station",
    "Which letter did the librarian remember",
)


def _sentence(rng: random.Random, first: bool) -> str:
    subject = rng.choice(_SUBJECTS)
    body = f"{subject} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_PLACES)}."
    if first or rng.random() < 0.5:
        return body[0].upper() + body[1:]
    return f"{rng.choice(_CONNECTIVES)}, {body}"


def words(seed: int, *, question: bool = False) -> Iterator[str]:
    """Yield an endless stream of words (without spaces) of deterministic prose.

    With ``question`` the stream is a sequence of questions, which suits the final
    user turn Q of the conversation.
    """
    rng = random.Random(seed)
    first = True
    while True:
        text = f"{rng.choice(_QUESTIONS)}? " if question else _sentence(rng, first)
        first = False
        yield from text.split()


def words_from_text(text: str, cut: int, cuts: int) -> Iterator[str]:
    """Yield the words of a user-supplied text, once, in order: from the start of its
    ``cut``-th of ``cuts`` equal parts to the end, then from its beginning (so that
    several distinct prompts can come from one text)."""
    words = text.split()
    start = cut * len(words) // max(cuts, 1)
    yield from words[start:]
    yield from words[:start]
