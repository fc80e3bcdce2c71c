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
    assert list(words_from_text(text)) == words
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
