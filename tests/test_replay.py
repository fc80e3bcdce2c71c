"""Conversations replayed on the real in-process engine, turn by turn.

The default model (SmolLM2, its own chat template) replays the built-in set under the
policies and both cache behaviours, and every turn's reuse is checked against
llama.cpp's own counters. A template that renders past turns differently is caught as
``template``; a tiny random-weight llama with a template file produces replies whose
re-tokenized text differs from the generated tokens, caught as ``tokenization``; a
conversation that does not fit under ``none`` is refused before the weights load.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from kvcache_exp.chat import tripwire
from kvcache_exp.chat.columns import TURN_COLUMNS
from kvcache_exp.chat.policies import PolicyError, make_policy
from kvcache_exp.config.conversations import conversation_job
from kvcache_exp.measure.replay import Replayer
from kvcache_exp.measure.replay_job import conversations_of, prepare, run_replay

#: Short turns (about 50 tokens a pair) in a budget of about three of them: the first
#: drop comes at turn 4, and a second shift of the same cells at turn 5.
SMALL = {
    "builtin": {"conversations": 2, "turns": 6, "user_words": 12, "reply_words": 8},
    "budget_tokens": 160,
    "reply_tokens": 12,
    "quality_tokens": 6,
}


def job_for(policy: dict, cache: str, **replay) -> object:
    config = {
        "n_ctx": 512,
        "n_threads": 2,
        "conversations": {**SMALL, "policies": [policy], **replay},
    }
    label = policy.get("label") or policy["name"]
    return conversation_job(config, "builtin", label, cache, 2)


def replayed(engine, model_path: Path, job) -> pd.DataFrame:
    """The rows of the job's conversations on the session's engine."""
    conversations, renderer = prepare(model_path, job)
    try:
        replayer = Replayer(engine, renderer, make_policy(job.policy, job.budget), job)
        rows: list[dict] = []
        for conversation in conversations:
            replayer.conversation(conversation, rows)
    finally:
        renderer.close()
    return pd.DataFrame(rows, columns=list(TURN_COLUMNS))


@pytest.fixture(scope="module")
def drop_oldest(engine, model_path):
    """drop_oldest under both cache behaviours, live replies."""
    return {
        cache: replayed(engine, model_path, job_for({"name": "drop_oldest"}, cache))
        for cache in ("prefix", "shift")
    }


def test_every_turn_is_verified_from_the_engines_counters(drop_oldest):
    for cache, rows in drop_oldest.items():
        assert rows["cache_verified"].all(), (cache, rows["cache_note"].tolist())
        assert (rows["cached_tokens"] == rows["expected_cached"]).all()
        assert (rows["evaluated_tokens"] == rows["prompt_tokens"] - rows["cached_tokens"]).all()
        assert (rows["prompt_tokens"] <= 192).all()
        first = rows[rows["turn"] == 1]
        assert (first["held_tokens"] == 0).all() and (first["cached_tokens"] == 0).all()


def test_prefix_reuses_only_the_system_message_after_a_drop(drop_oldest):
    rows = drop_oldest["prefix"]
    removed = rows[rows["removed"]]
    assert len(removed) >= 2
    assert set(removed["tripwire_cause"]) == {tripwire.TRUNCATION}
    # Without truncation, each turn reuses the whole previous prompt and reply.
    kept = rows[~rows["removed"] & (rows["turn"] > 1)]
    assert (kept["cached_tokens"] >= kept["held_tokens"] - 1).all()
    # After a drop, only the tokens before the first dropped turn are reused: the
    # system message (and the next user message's header, or a word the two user
    # messages happen to share).
    assert (removed["cached_tokens"] == removed["tripwire_index"]).all()
    assert removed["cached_tokens"].max() - removed["cached_tokens"].min() <= 3
    system_end = "sentences.<|im_end|>"
    assert removed["tripwire_before"].str.contains(system_end, regex=False).all()


def test_shift_moves_the_kept_turns_and_measures_their_quality(drop_oldest):
    prefix, shift = drop_oldest["prefix"], drop_oldest["shift"]
    moved = shift[shift["removed_start"] >= 0]
    assert len(moved) >= 2
    same = prefix.set_index(["conversation", "turn"]).loc[
        list(zip(moved["conversation"], moved["turn"], strict=True))
    ]
    # The shift reuses far more than the prefix, and evaluates that much less.
    assert (moved["cached_tokens"].to_numpy() > same["cached_tokens"].to_numpy() + 16).all()
    assert (moved["removed_end"] > moved["removed_start"]).all()
    assert (moved["removed_start"] == same["cached_tokens"].to_numpy()).all()
    # Each shift moves the kept cells once more; quality is measured while the cache
    # holds shifted cells, never otherwise.
    assert shift["shifts"].max() >= 2
    measured = shift["quality_positions"] > 0
    assert (measured == (shift["shifts"] > 0)).all()
    assert shift.loc[measured, "kl_mean"].between(0, 5).all()
    assert shift.loc[measured, "top1_agreement"].between(0, 1).all()
    assert prefix["kl_mean"].isna().all() and (prefix["shifts"] == 0).all()


def test_the_replays_own_work_is_timed_outside_the_call(drop_oldest):
    rows = drop_oldest["prefix"]
    for column in ("render_ms", "tokenize_ms", "compare_ms"):
        assert (rows[column] > 0).all() and rows[column].map(math.isfinite).all()
    assert (rows["ttft_ms"] >= rows["prefill_ms"]).all()
    assert (rows["reply_tokens"] <= 12).all() and (rows["decode_tok_s"] > 0).all()


def test_context_shift_shifts_the_same_cells_again(engine, model_path):
    rows = replayed(
        engine,
        model_path,
        job_for({"name": "context_shift", "n_keep": "system"}, "shift", replies="recorded"),
    )
    assert rows["cache_verified"].all(), rows["cache_note"].tolist()
    assert rows["finish_reason"].eq("recorded").all() and rows["decode_ms"].isna().all()
    discarded = rows[rows["removed"]]
    assert len(discarded) >= 2 and (discarded["tokens_discarded"] > 0).all()
    # The kept n_keep tokens are the system message's: a span removed starts there.
    # (When the kept half holds nothing cached, e.g. only the new message, there is no
    # span to move, and the prefix is all that is reused.)
    moved = discarded[discarded["removed_start"] >= 0]
    assert len(moved) >= 1 and moved["removed_start"].nunique() == 1
    assert (moved["cached_tokens"] > moved["removed_start"]).all()


THINKING = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and loop.last %}<think>\n\n</think>\n\n{% endif %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}"
)


def test_a_template_that_renders_past_turns_differently_is_caught(engine, model_path, tmp_path):
    """An empty thinking block only on the last assistant turn (and in the generation
    prompt), as reasoning models' templates do: every next turn breaks the prefix there."""
    template = tmp_path / "thinking.jinja"
    template.write_text(THINKING)
    job = job_for(
        {"name": "none"},
        "prefix",
        replies="recorded",
        budget_tokens=400,
        builtin={"conversations": 2, "turns": 3},
    )
    job = type(job)(**{**job.__dict__, "chat_template_file": str(template)})
    rows = replayed(engine, model_path, job)
    assert rows["cache_verified"].all()
    later = rows[rows["turn"] > 1]
    assert set(later["tripwire_cause"]) == {tripwire.TEMPLATE}
    assert later["tripwire_cached"].str.startswith("<think>").all()
    assert (later["cached_tokens"] == later["tripwire_index"]).all()


def test_a_conversation_longer_than_none_allows_is_refused_before_the_model_loads(
    model_path, tmp_path
):
    long = {
        "messages": [
            m
            for i in range(6)
            for m in (
                {"role": "user", "content": f"Question {i}: " + "words " * 30},
                {"role": "assistant", "content": "Answer " * 20},
            )
        ]
    }
    chats = tmp_path / "chats.jsonl"
    chats.write_text(
        json.dumps({"messages": long["messages"][:2]}) + "\n" + json.dumps(long) + "\n"
    )
    job = job_for({"name": "none"}, "prefix", replies="recorded")
    job = type(job)(**{**job.__dict__, "conversations_file": str(chats), "set": "chats"})
    assert len(conversations_of(job)) == 2
    with pytest.raises(
        PolicyError, match=r"chats.jsonl, line 2 \(id '2'\), turn \d: .*policy none"
    ):
        prepare(model_path, job)


@pytest.mark.slow
def test_generated_tokens_that_re_tokenize_differently_are_caught(tmp_path):
    """A tiny random-weight llama generates token sequences its tokenizer would not
    make from their text; the next turn's prompt re-tokenizes the reply."""
    from llama_tiny import make_tiny_llama

    model = make_tiny_llama(tmp_path / "tiny.gguf", n_ctx=1024)
    template = tmp_path / "chat.jinja"
    template.write_text(
        "{% for m in messages %}<|endoftext|>{{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|endoftext|>assistant: {% endif %}"
    )
    config = {
        "n_ctx": 1024,
        "n_threads": 2,
        "chat_template_file": str(template),
        "conversations": {
            "builtin": {"conversations": 2, "turns": 4, "user_words": 8},
            "policies": [{"name": "none"}],
            "budget_tokens": 900,
            "reply_tokens": 24,
        },
    }
    job = conversation_job(config, "builtin", "none", "prefix", 2)
    rows = run_replay(model, job, tmp_path / "out.csv")
    assert rows["cache_verified"].all(), rows["cache_note"].tolist()
    later = rows[rows["turn"] > 1]
    assert tripwire.TOKENIZATION in set(later["tripwire_cause"])
    assert set(later["tripwire_cause"]) <= {tripwire.TOKENIZATION, tripwire.NONE}
    broke = later[later["tripwire_cause"] == tripwire.TOKENIZATION]
    assert (broke["cached_tokens"] == broke["tripwire_index"]).all()
    assert (tmp_path / "out.csv").is_file()
