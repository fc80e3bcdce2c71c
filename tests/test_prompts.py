"""Prompts of exact token counts, with the prefix properties the experiment relies on."""

from __future__ import annotations

import pytest

from kvcache_exp.measure.prompts import PromptError, build_prompts, check_prompts, read_source_text


@pytest.mark.parametrize(
    ("a", "b", "q"),
    [(512, 256, 16), (384, 384, 16), (256, 512, 16), (64, 32, 1), (1, 1, 1), (37, 91, 5)],
)
def test_exact_token_counts_and_prefix_identity(tokenize, a, b, q):
    p = build_prompts(tokenize, a, b, q)
    assert (len(p.a.tokens), len(p.b.tokens), len(p.q.tokens)) == (a, b, q)
    assert len(p.warmup) == a + b
    assert len(p.hit) == a + b + q
    assert len(p.miss) == b + q
    # The hit prompt starts with exactly the warm-up's tokens ...
    assert p.hit[: a + b] == p.warmup
    # ... and the miss prompt shares nothing at the start with it (no BOS, no header).
    assert p.miss[0] != p.warmup[0]
    # Each recorded text tokenizes again to exactly its tokens.
    for name in ("warmup", "hit", "miss"):
        assert tokenize(p.text(name)) == p.tokens(name)


def test_prompts_are_deterministic(tokenize):
    assert build_prompts(tokenize, 100, 50, 8) == build_prompts(tokenize, 100, 50, 8)


def test_query_avoids_a_given_first_token(tokenize):
    first = build_prompts(tokenize, 32, 32, 8)
    other = build_prompts(tokenize, 32, 32, 8, avoid_q_first=first.q.tokens[0])
    assert other.q.tokens[0] != first.q.tokens[0]
    assert len(other.q.tokens) == 8


def test_prompts_from_a_users_text(tokenize, tmp_path):
    path = tmp_path / "story.txt"
    path.write_text(" ".join(f"word{i % 7} and more text here." for i in range(400)))
    p = build_prompts(tokenize, 60, 40, 10, source_text=read_source_text(path))
    assert (len(p.a.tokens), len(p.b.tokens), len(p.q.tokens)) == (60, 40, 10)
    check_prompts(p, tokenize)


def test_too_short_text_names_the_shortfall(tokenize):
    with pytest.raises(PromptError, match=r"too short for context B: it gave \d+ of the 500"):
        build_prompts(tokenize, 20, 500, 4, source_text="only a few words here " * 10)


@pytest.mark.parametrize(("content", "message"), [("", "is empty"), ("   \n", "is empty")])
def test_empty_text_file(tmp_path, content, message):
    path = tmp_path / "t.txt"
    path.write_text(content)
    with pytest.raises(PromptError, match=message):
        read_source_text(path)


def test_missing_and_unreadable_text_file(tmp_path):
    with pytest.raises(PromptError, match="does not exist"):
        read_source_text(tmp_path / "nope.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9 " * 10)
    with pytest.raises(PromptError, match="cannot be read"):
        read_source_text(bad)


def test_a_users_text_is_read_from_the_start_of_its_part():
    """Prompt variant t of n reads the text from the start of its t-th of n equal parts,
    then wraps around to the beginning."""
    from kvcache_exp.measure.text import words_from_text

    words = [f"w{i}" for i in range(8)]
    text = " ".join(words)
    assert list(words_from_text(text, 0, 1)) == words
    assert list(words_from_text(text, 1, 4)) == words[2:] + words[:2]
    assert list(words_from_text(text, 3, 4)) == words[6:] + words[:6]
    assert list(words_from_text(text, 1, 0)) == words  # no parts: the one part is all of it


def test_a_run_of_text_without_spaces_is_cut_at_the_longest_part_that_fits(tokenize):
    """Chinese writes whole sentences without spaces: when such a run would overshoot a
    segment, its longest leading part of at most ``room`` tokens is taken (never the
    whole run, which did not fit), or nothing when not even one character fits."""
    from kvcache_exp.measure.prompts import _leading_part

    word = "缓存保存了每个词元的键和值当提示的开头改变时模型必须重新计算"
    widths = [len(tokenize(" " + word[:end])) for end in range(len(word) + 1)]
    for room in range(widths[-1] + 2):
        fitting = [end for end in range(1, len(word)) if widths[end] <= room]
        expected = word[: max(fitting)] if fitting else ""
        assert _leading_part(word, room, tokenize) == expected, room


def test_the_prose_is_the_same_on_every_machine_and_in_every_version():
    """The prompts of every published run come from this stream: its words are pinned, so
    that a change to the grammar (and so to every prompt, and every number measured on
    it) cannot pass unnoticed. Sentences start with a capital, some after a connective."""
    from itertools import islice

    from kvcache_exp.measure.text import words

    assert " ".join(islice(words(0), 40)) == (
        "The mayor cleaned the green door before breakfast. Soon, the young doctor opened "
        "the empty barn during the market. Our teacher visited an old bicycle at the end of "
        "the street. Still, the old captain planted a pair of boots"
    )
    assert " ".join(islice(words(1, question=True), 16)) == (
        "Who visited the village bridge after the storm? How many boxes did the student carry to"
    )


@pytest.mark.parametrize(
    ("sizes", "short"),
    [
        ((60, 10, 10, 4), "kept prefix S"),
        ((0, 500, 10, 4), "context A"),
        ((0, 10, 500, 4), "context B"),
        ((3, 10, 10, 500), "query Q"),
    ],
)
def test_a_text_too_short_names_the_segment_and_what_all_need(tokenize, sizes, short):
    """S, A, B and Q are read in order from one text: the message names the segment that
    ran out, its need, and what all of them need together."""
    s, a, b, q = sizes
    parts = "S, A, B and Q" if s else "A, B and Q"
    need = dict(zip(("kept prefix S", "context A", "context B", "query Q"), sizes, strict=True))
    message = (
        rf"^the text is too short for {short}: it gave \d+ of the {need[short]} tokens needed "
        rf"\({parts} need {s + a + b + q} tokens in all, taken in order from the prompt text "
        r"file: give a longer text\)$"
    )
    with pytest.raises(PromptError, match=message):
        build_prompts(tokenize, a, b, q, size_s=s, source_text="only a few words here " * 10)


def test_the_variants_of_the_prose(tokenize):
    """Variant 0 of 1 is the default (the seed's prompt); variant t draws S, A, B and Q
    from the prose seeded 4, 1, 2, 3 plus 100·t, Q as questions."""
    from itertools import islice

    from kvcache_exp.measure.text import words

    assert build_prompts(tokenize, 12, 12, 6) == build_prompts(
        tokenize, 12, 12, 6, variant=0, variants=1
    )

    def drawn_from(segment, stream) -> bool:
        """The segment's first words run on in the stream, from one of its first words
        (B skips a word that would start it with A's first token)."""
        head, prose = segment.text.split()[:3], list(islice(stream, 12))
        return any(prose[k : k + 3] == head for k in range(4))

    for variant in (0, 2):
        p = build_prompts(tokenize, 12, 12, 6, size_s=6, variant=variant, variants=3)
        for segment, seed in ((p.s, 4), (p.a, 1), (p.b, 2)):
            assert drawn_from(segment, words(seed + 100 * variant)), (variant, seed)
        assert drawn_from(p.q, words(3 + 100 * variant, question=True)), variant


def _word_tokens(text: str) -> list[int]:
    """A tokenizer of whole words for the segment builder's own logic: each word is one
    token, and each hyphen in it one more."""
    return [len(w) * 1000 + i for w in text.split() for i in range(1 + w.count("-"))]


def test_segments_close_a_gap_with_fillers_and_cut_only_long_runs():
    """A word that would overshoot is left out and one-token fillers close the gap; a run
    wider than _LONG_RUN tokens (a sentence without spaces) is cut to its longest part
    that fits instead."""
    from kvcache_exp.measure.prompts import _LONG_RUN, _build_segment

    seg = _build_segment("context A", 3, iter(["x-y", "z-w"] * 3), _word_tokens, None, "")
    assert seg.text == " x-y a" and len(seg.tokens) == 3
    at_limit = "-".join("u" * _LONG_RUN)  # exactly _LONG_RUN tokens wide: not cut
    seg = _build_segment("context A", 2, iter(["v", at_limit] * 3), _word_tokens, None, "")
    assert seg.text == " v and"
    with pytest.raises(PromptError, match="^the text is too short for query Q: it gave 0 of"):
        _build_segment("query Q", 2, iter([]), _word_tokens, None, "")


def test_the_prompts_checks_name_what_breaks_them():
    """The properties the experiment relies on, each with its own message: every prompt's
    text reads back as its tokens, and the miss differs from the warm-up right after S."""
    from kvcache_exp.measure.prompts import PromptSet, Segment

    def seg(text: str) -> Segment:
        return Segment(text=text, tokens=tuple(_word_tokens(text)))

    good = PromptSet(a=seg(" a b"), b=seg(" cc d"), q=seg(" eee"), s=seg(" s"))
    check_prompts(good, _word_tokens)
    bad_text = PromptSet(a=Segment(" a b", (1, 2)), b=seg(" cc d"), q=seg(" eee"))
    with pytest.raises(PromptError, match="^the warmup prompt's text does not tokenize back"):
        check_prompts(bad_text, _word_tokens)
    same_start = PromptSet(a=seg(" a b"), b=seg(" a d"), q=seg(" eee"), s=seg(" s"))
    with pytest.raises(
        PromptError,
        match="^the miss prompt shares its first token after the kept prefix with the warm-up$",
    ):
        check_prompts(same_start, _word_tokens)
