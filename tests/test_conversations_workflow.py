"""The conversation replay in the workflow and on the command line: one job per set (or
shard), policy and cache behaviour; every bad input refused while the workflow is
parsed (or before the command line fetches or loads a model), naming the line."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from workflow_copy import copy_workflow, job_counts, snakemake, write_config

from kvcache_exp.cli import chat_main, plot_main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("conversations") / "repo")


def dry_run(workdir: Path, values: dict, check: bool = True) -> str:
    write_config(workdir, "conv.yaml", values)
    proc = snakemake(workdir, "-n", "--configfile", "conv.yaml", check=check)
    return proc.stdout + proc.stderr


def chats(path: Path, *records: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def chat(i: int, turns: int = 1, words: int = 5) -> dict:
    messages = []
    for t in range(turns):
        messages += [
            {"role": "user", "content": f"Question {i}.{t}: " + "word " * words},
            {"role": "assistant", "content": "Answer " * words},
        ]
    return {"id": f"c{i}", "messages": messages}


def test_one_job_per_set_policy_and_cache_behaviour(workdir, model_path):
    out = dry_run(workdir, {"model": str(model_path)})
    assert job_counts(out)["replay_conversations"] == 6
    for policy in ("drop_oldest", "drop_chunk", "context_shift"):
        for cache in ("prefix", "shift"):
            assert f"results/conversations/builtin/{policy}-{cache}.csv" in out
    assert job_counts(out)["summarize_conversations"] == 1
    assert job_counts(out)["plot_conversations"] == 1


def test_the_default_cache_behaviours_follow_the_engine(workdir, model_path):
    """cache: null replays the prefix and the engine's own shift: switching to
    llama-server stays one setting."""
    out = dry_run(workdir, {"model": str(model_path), "engine": "llama_server"})
    assert job_counts(out)["replay_conversations"] == 6
    assert "results/conversations/builtin/drop_chunk-server_reuse.csv" in out
    assert "-shift.csv" not in out


def test_a_large_file_is_cut_into_shards(workdir, model_path):
    chats(workdir / "many.jsonl", *(chat(i) for i in range(5)))
    out = dry_run(
        workdir,
        {
            "model": str(model_path),
            "conversations_file": "many.jsonl",
            "conversations": {"shard_size": 2, "cache": ["prefix"]},
        },
    )
    assert job_counts(out)["replay_conversations"] == 3 * 3
    for shard in ("many.1", "many.2", "many.3"):
        assert f"results/conversations/{shard}/drop_oldest-prefix.csv" in out
    assert out.count("many.jsonl") >= 9  # the file is an input of every replay job


@pytest.mark.parametrize(
    ("lines", "conversations", "message"),
    [
        (
            ['{"messages": [{"role": "user", "content": "hi"}]}', "{oops"],
            {},
            "bad.jsonl, line 2: not JSON",
        ),
        (
            ['{"messages": [{"role": "robot", "content": "hi"}]}'],
            {},
            "bad.jsonl, line 1, message 1: unknown role 'robot'",
        ),
        ([""], {}, "the file holds no conversation (it is empty)"),
        (
            [json.dumps(chat(1)), json.dumps(chat(2, turns=8, words=40))],
            {"policies": [{"name": "none"}]},
            r"conversations.policies (none): bad.jsonl, line 2 (id 'c2'), turn",
        ),
    ],
    ids=["not-json", "unknown-role", "empty", "too-long-for-none"],
)
def test_a_bad_conversation_file_stops_the_parse(
    workdir, model_path, lines, conversations, message
):
    chats(workdir / "bad.jsonl", *lines)
    values = {"model": str(model_path), "conversations_file": "bad.jsonl"}
    out = dry_run(workdir, {**values, "conversations": conversations}, check=False)
    assert "Invalid configuration" in out and message in out, out[-3000:]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"engine": "llama_server", "conversations": {"cache": ["shift"]}},
            "conversations.cache: shift needs llama.cpp's cache operations in-process",
        ),
        (
            {"conversations": {"policies": [{"name": "drop_oldest", "target": 0.5}]}},
            "conversations.policies[0] (drop_oldest): target is not a parameter of drop_oldest",
        ),
        (
            {"conversations": {"policies": [{"name": "drop_oldest"}, {"name": "drop_oldest"}]}},
            "policies[1] (drop_oldest): the label 'drop_oldest' is also policies[0]'s",
        ),
        (
            {"n_ctx": 1024, "conversations": {"budget_tokens": 1020}},
            "need 1036 tokens, more than n_ctx=1024",
        ),
        ({"chat_template_file": "missing.jinja"}, "chat_template_file: cannot read missing.jinja"),
    ],
    ids=["shift-on-a-server", "foreign-parameter", "same-label", "budget", "template-file"],
)
def test_bad_conversation_settings_stop_the_parse(workdir, model_path, values, message):
    out = dry_run(workdir, {"model": str(model_path), **values}, check=False)
    assert "Invalid configuration" in out and message in out, out[-3000:]


def test_a_model_without_a_chat_template_leaves_the_replay_out(workdir, tmp_path):
    from llama_tiny import make_tiny_llama

    model = make_tiny_llama(tmp_path / "tiny.gguf")
    out = dry_run(workdir, {"model": str(model)})
    assert "tiny.gguf has no chat template" in out and "left out of this run" in out
    assert "replay_conversations" not in job_counts(out)
    template = workdir / "chat.jinja"
    template.write_text("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    # Its tokenizer has few merges: a first turn takes over 100 tokens.
    with_template = {"model": str(model), "chat_template_file": "chat.jinja"}
    out = dry_run(workdir, {**with_template, "conversations": {"budget_tokens": 100}}, False)
    assert "builtin (id 'builtin-1'), turn 1: the prompt takes" in out
    assert "even after dropping every turn it may drop, more than the budget of 100" in out
    out = dry_run(workdir, with_template)
    assert job_counts(out)["replay_conversations"] == 6
    out = dry_run(workdir, {**with_template, "conversations": {"budget_tokens": 1016}}, False)
    assert "a prompt of 1016 tokens and a reply of 16 need 1032 tokens, more than" in out
    assert "more than tiny was trained for (1024 tokens" in out


def test_the_command_line_checks_the_file_before_any_model(tmp_path, capfd):
    bad = chats(tmp_path / "bad.jsonl", '{"messages": [{"role": "user"}]}')
    missing = tmp_path / "absent.gguf"  # never reached: the file is checked first
    code = chat_main(["--config", str(tmp_path / "none.yaml"), "--model", str(missing),
                      "--conversations-file", str(bad)])  # fmt: skip
    assert code == 2
    assert "bad.jsonl, line 1, message 1: the content must be a string" in capfd.readouterr().err


@pytest.mark.slow
def test_the_command_line_replays_and_kvcache_plot_summarizes(tmp_path, model_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "n_threads": 2,
                "conversations": {
                    "builtin": {"conversations": 2, "turns": 3, "user_words": 12},
                    "budget_tokens": 100,
                    "reply_tokens": 8,
                    "quality_tokens": 4,
                },
            }
        )
    )
    results = tmp_path / "results"
    args = ["--config", str(config), "--model", str(model_path), "--results-dir", str(results)]
    assert chat_main([*args, "--policy", "drop_oldest", "--cache", "shift"]) == 0
    rows = pd.read_csv(results / "conversations/builtin/drop_oldest-shift.csv")
    assert len(rows) == 6 and rows["cache_verified"].all() and rows["removed"].any()
    plots = tmp_path / "plots"
    assert (
        plot_main(
            ["--results-dir", str(results), "--plots-dir", str(plots), "--config", str(config)]
        )
        == 0
    )
    assert len(pd.read_csv(results / "conversations/summary.csv")) == 1
    assert (plots / "conversations_ttft.png").is_file()
