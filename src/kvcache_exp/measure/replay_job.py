"""One replay job: its conversations, checked to fit before any model loads, the engine
opened once, every conversation replayed (:class:`.replay.Replayer`), and one CSV with a
row per turn, with the job's provenance beside it.

Turns whose reuse the engine's counters do not prove are never dropped: with
``require_cache_verified`` they are kept in ``unverified/`` beside the CSV and the job
fails with the first reason; without it they are written with their reason, and every
statistic leaves them out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kvcache_exp import provenance
from kvcache_exp.chat.columns import TURN_COLUMNS
from kvcache_exp.chat.policies import Pair, make_policy
from kvcache_exp.chat.source import (
    ASSISTANT,
    Conversation,
    Message,
    builtin_conversations,
    read_conversations,
    shard,
)
from kvcache_exp.config.conversations import ConversationJob
from kvcache_exp.engines import (
    Capability,
    Engine,
    EngineError,
    open_engine,
    verification_gap,
)
from kvcache_exp.engines.chat_vocab import ChatVocabulary
from kvcache_exp.measure.rendering import ChatRenderer, ServerRenderer, load_template
from kvcache_exp.measure.replay import Replayer
from kvcache_exp.measure.replay_cache import check_engine
from kvcache_exp.outputs import write_csv

log = logging.getLogger(__name__)


class UnverifiedReplayError(RuntimeError):
    """Some turns' reuse could not be proven from the engine's counters."""


def conversations_of(job: ConversationJob) -> list[Conversation]:
    """The conversations of the job's set (or shard), read and checked."""
    if job.conversations_file:
        found = shard(read_conversations(job.conversations_file), job.set, job.replay.shard_size)
    else:
        b = job.replay.builtin
        found = builtin_conversations(
            b["conversations"], b["turns"], b["user_words"], b["reply_words"]
        )
    return found


def placeholder_reply(renderer: ChatRenderer, tokens: int) -> str:
    """A reply of about ``tokens`` tokens, standing for a live reply of at most that
    many when checking that conversations fit before any model loads."""
    return renderer.detokenize(renderer.part(" yes" * tokens)[:tokens])


def check_fits(
    conversations: Sequence[Conversation],
    job: ConversationJob,
    renderer: ChatRenderer,
) -> None:
    """Replay the policy alone (no engine) over every conversation, so that a template
    that refuses one, or a turn that no truncation fits (any turn under ``none``), is an
    error naming it before the model loads. Live replies are taken at their longest,
    ``reply_tokens`` tokens each."""
    policy = make_policy(job.policy, job.budget)
    filler = placeholder_reply(renderer, job.replay.reply_tokens)
    for conversation in conversations:
        policy.reset()
        renderer.forget(conversation.where)
        pairs: list[Pair] = []
        for index, turn in enumerate(conversation.turns, start=1):
            where = f"{conversation.where}, turn {index}"
            policy.select(conversation.system, pairs, turn.user, renderer, where)
            text = turn.reply.content if turn.reply and job.replay.replies == "recorded" else filler
            pairs.append((turn.user, Message(ASSISTANT, text)))
    renderer.forget()
    renderer.take_times()


def job_record(
    model_path: Path,
    job: ConversationJob,
    engine_info: dict[str, Any],
    started: tuple[str, float],
    finished: tuple[str, float],
    template_origin: str,
) -> dict[str, Any]:
    """The provenance of one replay job: what, where, when, with which code and build."""
    return {
        "label": f"{job.set}/{job.label}-{job.cache}",
        **provenance.job_record(
            model_path, job.as_dict(), job.n_threads, engine_info, started, finished
        ),
        "chat_template": template_origin,
    }


def client_renderer(model_path: Path, job: ConversationJob) -> ChatRenderer:
    """The renderer of ``render: client``: the chat template (the GGUF's, or the job's
    file) and the GGUF's tokenizer, read without the model's weights."""
    vocab = ChatVocabulary(model_path)
    try:
        return ChatRenderer(load_template(vocab, job.chat_template_file), vocab)
    except BaseException:
        vocab.close()
        raise


def prepare(
    model_path: Path, job: ConversationJob
) -> tuple[list[Conversation], ChatRenderer | None]:
    """The job's conversations and renderer, every conversation checked against the
    template and the budget: all before the model's weights are loaded (the tokenizer
    is read from the GGUF alone). With ``render: server`` the server renders, so the
    budget is checked once it runs (:func:`server_renderer`), before any turn."""
    conversations = conversations_of(job)
    if job.replay.render == "server":
        return conversations, None
    renderer = client_renderer(model_path, job)
    try:
        check_fits(conversations, job, renderer)
    except BaseException:
        renderer.close()
        raise
    return conversations, renderer


def server_renderer(
    engine: Engine, conversations: list[Conversation], job: ConversationJob
) -> ChatRenderer:
    """The renderer of ``render: server``: llama-server's own template and tokenizer,
    every conversation checked against the budget before the first turn."""
    if Capability.SERVER_CHAT not in engine.capabilities:
        raise EngineError(
            f"conversations.render: server needs llama-server's chat templates; the "
            f"{engine.name} engine has none"
        )
    renderer = ServerRenderer(engine)
    check_fits(conversations, job, renderer)
    return renderer


def run_replay(
    model_path: Path, job: ConversationJob, out_csv: Path, record_json: Path | None = None
) -> pd.DataFrame:
    """Replay the job's conversations under its policy and cache behaviour; write one row
    per turn to ``out_csv`` and the job's provenance to ``record_json``.

    Turns whose reuse the engine's counters do not prove are kept: with
    ``require_cache_verified`` the CSV goes to ``unverified/`` beside it and the job
    fails with the first reason; without, they are written with the reason (and left
    out of every statistic).
    """
    started = provenance.now()
    conversations, renderer = prepare(model_path, job)
    log.info(
        "replaying %d conversations of %s, policy %s, cache %s, budget %d tokens, %s replies",
        len(conversations),
        job.set,
        job.label,
        job.cache,
        job.budget,
        job.replay.replies,
    )
    rows: list[dict[str, Any]] = []
    try:
        engine = open_engine(model_path, job)  # type: ignore[arg-type]  # the engine's fields
        try:
            engine_info = engine.describe()
            check_engine(engine, job.cache)
            gap = verification_gap(engine)
            if gap and job.require_cache_verified:
                raise EngineError(
                    f"no turn of this replay could be cache-verified: {gap}. Set "
                    "require_cache_verified: false to replay anyway (every turn is then "
                    "written unverified, with the reason, and enters no statistic)"
                )
            if renderer is None:
                renderer = server_renderer(engine, conversations, job)
            replayer = Replayer(engine, renderer, make_policy(job.policy, job.budget), job)
            for conversation in conversations:
                replayer.conversation(conversation, rows)
        finally:
            engine.close()
    finally:
        if renderer is not None:
            renderer.close()
    table = pd.DataFrame(rows, columns=list(TURN_COLUMNS))
    record = job_record(model_path, job, engine_info, started, provenance.now(), renderer.origin)
    bad = table[~table["cache_verified"].astype(bool)]
    if len(bad) and job.require_cache_verified:
        side = out_csv.parent / "unverified" / out_csv.name
        write_csv(table, side)
        first = bad.iloc[0]
        raise UnverifiedReplayError(
            f"{len(bad)} of {len(table)} turns' reuse is not proven by the engine's counters, "
            f"e.g. {first['conversation']} turn {first['turn']}: {first['cache_note']}. The "
            f"turns were kept in {side}. Set require_cache_verified: false to keep them with "
            "the reason (they are left out of every statistic)."
        )
    if len(bad):
        log.warning("%d turns are not cache-verified: %s", len(bad), bad.iloc[0]["cache_note"])
    write_csv(table, out_csv)
    if record_json is not None:
        provenance.write_json(record_json, record)
    return table
