"""Conversations replayed through llama.cpp's llama-server (started here, nothing mocked):
token-id prompts rendered on the client, the server's own ``--cache-reuse``, and the
server rendering the messages with its own template; every turn's reuse verified from
the server's ``timings.cache_n``. Skipped without the binary (``make server``)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from workflow_copy import REPO

from kvcache_exp.chat import tripwire
from kvcache_exp.config.conversations import conversation_job
from kvcache_exp.measure.replay_job import run_replay

SERVER = REPO / "build" / "llama.cpp" / "bin" / "llama-server"

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        not (SERVER.is_file() and os.access(SERVER, os.X_OK)),
        reason=f"llama-server is not built ({SERVER}): run `make server`",
    ),
]


def replay(model_path: Path, tmp_path: Path, cache: str, render: str) -> pd.DataFrame:
    config = {
        "engine": "llama_server",
        "n_ctx": 512,
        "n_threads": min(2, os.cpu_count() or 1),
        "conversations": {
            "builtin": {"conversations": 2, "turns": 5, "user_words": 12, "reply_words": 8},
            "budget_tokens": 160,
            "reply_tokens": 12,
            "policies": [{"name": "drop_oldest"}],
            "cache": [cache],
            "render": render,
        },
    }
    job = conversation_job(config, "builtin", "drop_oldest", cache, 2)
    return run_replay(model_path, job, tmp_path / f"{cache}-{render}.csv", tmp_path / "r.json")


@pytest.fixture(scope="module")
def replays(model_path, tmp_path_factory) -> dict[tuple[str, str], pd.DataFrame]:
    tmp = tmp_path_factory.mktemp("server-replay")
    return {
        key: replay(model_path, tmp, *key)
        for key in (("prefix", "client"), ("server_reuse", "client"), ("prefix", "server"))
    }


def test_every_turn_is_verified_from_the_servers_counts(replays):
    for key, rows in replays.items():
        assert rows["cache_verified"].all(), (key, rows["cache_note"].tolist())
        assert (rows["evaluated_tokens"] == rows["prompt_tokens"] - rows["cached_tokens"]).all()
        assert rows["removed"].any(), key
        assert (rows.loc[rows["turn"] == 1, "cached_tokens"] == 0).all()


def test_the_prefix_reuses_exactly_the_common_prefix(replays):
    rows = replays[("prefix", "client")]
    assert (rows["cached_tokens"] == rows["expected_cached"]).all()
    removed = rows[rows["removed"]]
    assert set(removed["tripwire_cause"]) == {tripwire.TRUNCATION}
    assert (removed["cached_tokens"] == removed["tripwire_index"]).all()


def test_the_servers_cache_reuse_keeps_more_than_the_prefix(replays):
    prefix, reuse = replays[("prefix", "client")], replays[("server_reuse", "client")]
    removed = reuse["removed"]
    assert (reuse["cached_tokens"] >= reuse["expected_cached"]).all()
    # The same prompts as the prefix replay (the replies are greedy, the same model),
    # but the server moved the kept turns back into place after each drop.
    assert (reuse.loc[removed, "cached_tokens"] > prefix.loc[removed, "cached_tokens"] + 16).any()
    assert reuse["shifts"].isna().all() and reuse["kl_mean"].isna().all()


def test_the_server_renders_the_same_prompts_as_the_client(replays):
    client, server = replays[("prefix", "client")], replays[("prefix", "server")]
    assert (server["render"] == "server").all()
    # llama-server's template engine renders SmolLM2's template to the same tokens as
    # ours, so the two replays send the same prompts and reuse the same prefixes.
    assert list(server["prompt_tokens"]) == list(client["prompt_tokens"])
    assert list(server["cached_tokens"]) == list(client["cached_tokens"])
