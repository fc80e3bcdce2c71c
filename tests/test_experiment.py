"""One configuration through the package: cache verification and early stops."""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import replace

import pandas as pd
import pytest
from workflow_copy import run_cli

from kvcache_exp.config.settings import merge
from kvcache_exp.engines.base import CallResult
from kvcache_exp.measure import checks, experiment, protocol
from kvcache_exp.measure.prompts import PromptSet, build_prompts
from kvcache_exp.measure.results import Measured
from kvcache_exp.measure.trials import run_trials
from kvcache_exp.paths import ConfigurationFiles


class BrokenHit(PromptSet):
    """A hit prompt whose prefix differs from the warm-up's by one token."""

    def tokens(self, name: str) -> list[int]:
        tokens = super().tokens(name)
        if name == "hit":
            tokens = list(tokens)
            tokens[len(self.a.tokens) // 2] = self.b.tokens[0]
        return tokens


def _files(results, prompts) -> ConfigurationFiles:
    """A configuration's four files: results and prompts as given, the record and the cures
    beside the results."""
    return ConfigurationFiles(
        results, prompts, results.with_name("run.json"), results.with_name("cures.csv")
    )


def _trial_rows(engine, prompts, settings) -> pd.DataFrame:
    """The seed's trials of ``prompts``, as the results table."""
    measured = Measured(prompts=prompts)
    run_trials(engine, prompts, settings, measured)
    return measured.result().results


def _settings(**extra):
    cures = {"quality_prompts": 2, "cure_keep_tokens": [0, 4], "recompute_shares": [0.25]}
    return merge(
        {"trials": 2, "settle_ms": 0, "max_tokens": 4, **cures, **extra},
        {"size_a": 24, "size_b": 12},
        n_threads=2,
    )


def test_a_broken_hit_is_caught_as_unverified(engine, tokenize):
    settings = _settings()
    good = build_prompts(tokenize, 24, 12, settings.query_tokens)
    broken = BrokenHit(a=good.a, b=good.b, q=good.q)
    df = _trial_rows(engine, broken, settings)
    hit, miss = df[df.condition == "hit"], df[df.condition == "miss"]
    assert not hit["cache_verified"].any()
    assert (
        hit["cache_note"]
        .str.contains(
            f"TTFT call evaluated {24 + 12 + settings.query_tokens - 12} tokens, "
            f"expected {settings.query_tokens}"
        )
        .all()
    )
    assert miss["cache_verified"].all()
    # The unbroken prompts verify.
    assert _trial_rows(engine, good, settings)["cache_verified"].all()


@pytest.fixture()
def broken_run(monkeypatch, model_path, tmp_path):
    """run_experiment with the broken hit prompt swapped in."""
    real = experiment.make_prompts

    def make_broken(engine, settings):
        p = real(engine, settings)
        return BrokenHit(a=p.a, b=p.b, q=p.q)

    monkeypatch.setattr(experiment, "make_prompts", make_broken)
    results, prompts = tmp_path / "results" / "r.csv", tmp_path / "prompts" / "p.csv"
    return results, prompts


def test_unverified_rows_fail_the_run_but_keep_the_measurements(broken_run, model_path):
    results, prompts = broken_run
    with pytest.raises(experiment.CacheVerificationError, match="did not evaluate the tokens"):
        experiment.run_experiment(model_path, _settings(), _files(results, prompts))
    assert not results.exists() and not prompts.exists()
    kept = pd.read_csv(results.parent / "unverified" / results.name)
    assert len(kept) == 4 and not kept["cache_verified"].all()


def test_unverified_rows_can_be_accepted_with_a_warning(broken_run, model_path, caplog):
    results, prompts = broken_run
    settings = replace(_settings(), require_cache_verified=False)
    with caplog.at_level(logging.WARNING):
        experiment.run_experiment(model_path, settings, _files(results, prompts))
    assert "are not cache-verified" in caplog.text
    assert (~pd.read_csv(results)["cache_verified"]).sum() == 2


def test_early_stop_at_eos_is_logged(caplog):
    df = pd.DataFrame(
        {
            "trial": [1, 1],
            "condition": ["hit", "miss"],
            "completion_tokens": [50, 7],
            "finish_reason": ["length", "stop"],
        }
    )
    with caplog.at_level(logging.WARNING):
        assert experiment.warn_early_stops(df, 50) == 1
    assert "1 of 2 trials stopped early at EOS" in caplog.text
    assert "miss trial 1: 7 tokens, finish_reason=stop" in caplog.text


def test_gpt2_eos_ends_generations_early_and_is_reported(tmp_path, caplog):
    """The seed's EOS path, on a tiny GPT-2 whose end-of-text logit dominates."""
    from gpt2_tiny import make_tiny_checkpoint

    from kvcache_exp.models.gpt2 import convert_gpt2_to_gguf

    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", n_positions=256, eos_dominant=True)
    model = convert_gpt2_to_gguf(checkpoint, tmp_path / "eos.gguf")
    settings = replace(_settings(max_tokens=10), n_ctx=256)
    results, prompts = tmp_path / "r.csv", tmp_path / "p.csv"
    with caplog.at_level(logging.WARNING):
        experiment.run_experiment(model, settings, _files(results, prompts))
    df = pd.read_csv(results)
    assert set(df["finish_reason"]) == {"stop"}
    assert (df["completion_tokens"] < settings.max_tokens).all()
    assert df["cache_verified"].all()  # the warm-up check allows for EOS
    assert "4 of 4 trials stopped early at EOS" in caplog.text


def _workflow_outputs(tmp_path, config_file) -> set[str]:
    """Every file ``snakemake`` (rule all) would write with ``config_file``, from its dry
    run: the list the command line must match."""
    from workflow_copy import copy_workflow, snakemake

    workdir = copy_workflow(tmp_path / "wf")
    proc = snakemake(workdir, "-n", "--configfile", str(config_file))
    found = set()
    for line in proc.stdout.splitlines():
        if line.strip().startswith("output:"):
            found |= {p.strip() for p in line.split(":", 1)[1].split(",")}
    return found


def test_command_line_writes_what_the_workflow_writes(tmp_path, model_path):
    """The seed's `phase3b_experiment.py --size-a A --size-b B`, then `plot_results.py`:
    `kvcache-exp` and `kvcache-plot` write every file the workflow's `rule all` writes for
    one configuration, with the same content rules (they call the rules' functions)."""
    import yaml

    config = {
        "model": str(model_path),
        "experiments": [{"size_a": 24, "size_b": 16}],
        "trials": 2,
        "settle_ms": 0,
        "max_tokens": 8,
        "recompute_shares": [0.25],
        # The conversation replay's files are kvcache-chat's (test_conversations_workflow.py).
        "conversations": {"enabled": False},
    }
    config_file = tmp_path / "one.yaml"
    config_file.write_text(yaml.safe_dump(config))
    work = tmp_path / "cli"
    work.mkdir()
    proc = run_cli("--size-a", "24", "--size-b", "16", "--config", str(config_file), cwd=work)
    assert proc.returncode == 0, proc.stderr
    results = pd.read_csv(work / "results/results_phase3b_a24_b16.csv")
    assert len(results) == 4 and results["cache_verified"].all()
    prompts = pd.read_csv(work / "prompts/prompts_phase3b_a24_b16.csv")
    assert list(prompts["token_count"]) == [40, 56, 32]
    assert not pd.read_csv(work / "results/cures_phase3b_a24_b16.csv").empty
    plot = subprocess.run(
        [
            sys.executable,
            "-c",
            "from kvcache_exp.cli import plot_main; raise SystemExit("
            f"plot_main(['--config', {str(config_file)!r}]))",
        ],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert plot.returncode == 0, plot.stderr
    written = {str(p.relative_to(work)) for p in work.rglob("*") if p.is_file()}
    expected = _workflow_outputs(tmp_path, config_file)
    assert expected, "the dry run listed no outputs"
    assert expected <= written, sorted(expected - written)


def test_command_line_rejects_bad_settings_with_the_workflows_messages(tmp_path, model_path):
    proc = run_cli(
        "--size-a",
        "24",
        "--size-b",
        "16",
        "--model",
        str(model_path),
        "--trials",
        "0",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "trials: 0 is less than the minimum of 1" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_ttft_is_one_sampled_token_even_when_it_is_a_partial_utf8_character(tmp_path):
    """A model whose every greedy token is a lone UTF-8 lead byte (0xE4): llama-cpp-python's
    create_completion keeps generating while the text ends in an incomplete character, so
    its "1-token" call decoded several tokens. The protocol samples exactly one, and the
    generation stops at max_tokens."""
    from gpt2_tiny import make_tiny_checkpoint

    from kvcache_exp.models.gpt2 import bytes_to_unicode, convert_gpt2_to_gguf

    lead = bytes_to_unicode()[0xE4]
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", n_positions=256, dominant=lead)
    model = convert_gpt2_to_gguf(checkpoint, tmp_path / "lead.gguf")
    settings = replace(_settings(max_tokens=12), n_ctx=256, cures=False)
    results, prompts = tmp_path / "r.csv", tmp_path / "p.csv"
    experiment.run_experiment(model, settings, _files(results, prompts))
    df = pd.read_csv(results)
    assert df["cache_verified"].all()
    assert (df["ttft_decode_tokens"] == 0).all()  # one sample, no extra decode
    assert (df["completion_tokens"] == 12).all() and set(df["finish_reason"]) == {"length"}
    assert (df["gen_decode_tokens"] == 11).all()
    expected = df["completion_tokens"] / (df["total_time_ms"] / 1000)
    assert (abs(df["throughput_tok_s"] - expected) < 1e-6 * expected).all()
    sample = pd.read_csv(prompts, keep_default_na=False)
    assert "\ufffd" in sample.loc[sample.prompt_name == "hit", "sample_output"].item()


NON_LATIN = (
    "Кэш ключей и значений хранит состояние каждого токена, и когда начало запроса "
    "меняется, модель должна пересчитать всё заново. 缓存保存了每个词元的键和值，"
    "当提示的开头改变时，模型必须重新计算。 Emoji 🙂🚀 stay too. "
) * 40


def test_non_latin_text_runs_on_the_real_model(tmp_path, model_path):
    """One configuration, cures included, on the embedded model with Russian, Chinese and
    emoji text: every trial and cure is verified, each TTFT call sampled one token, and no
    generation went past max_tokens (byte-level BPE splits these characters across tokens,
    which made create_completion's "1-token" calls decode more)."""
    path = tmp_path / "story.txt"
    path.write_text(NON_LATIN, encoding="utf-8")
    settings = _settings(prompt_text_file=str(path), max_tokens=8, recompute_shares=[0.25])
    results, prompts = tmp_path / "r.csv", tmp_path / "p.csv"
    cures = tmp_path / "cures.csv"
    experiment.run_experiment(model_path, settings, _files(results, prompts))
    df = pd.read_csv(results)
    assert len(df) == 4 and df["cache_verified"].all()
    assert (df["ttft_decode_tokens"] == 0).all()
    assert (df["completion_tokens"] <= 8).all()
    sample = pd.read_csv(prompts, keep_default_na=False)
    assert any("\u0400" <= ch <= "\u04ff" for ch in "".join(sample["prompt_text"]))
    found = pd.read_csv(cures)
    assert found["cache_verified"].all()
    assert set(found["cure"]) == {
        "hit",
        "miss",
        "shift",
        "shift_tail_0.25",
        "shift_head_0.25",
        "cached_vs_full",
    }


def test_non_latin_prompt_text_gives_exact_prompts(tmp_path, engine):
    """Text in other scripts (Russian, Chinese, emoji) on the real model: every prompt is
    still exactly the configured number of tokens, and its text tokenizes back to them."""
    from kvcache_exp.measure.prompts import read_source_text

    path = tmp_path / "story.txt"
    path.write_text(NON_LATIN, encoding="utf-8")
    p = build_prompts(engine.tokenize, 96, 64, 16, source_text=read_source_text(path))
    assert (len(p.a.tokens), len(p.b.tokens), len(p.q.tokens)) == (96, 64, 16)
    for name in ("warmup", "hit", "miss"):
        assert engine.tokenize(p.text(name)) == p.tokens(name)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in p.text("hit"))


def _trial(
    cleared: int | None, warm_cached: int | None, gen_prompt: int = 0
) -> protocol.TrialMeasurement:
    """A trial whose counts match a hit of 4 tokens after a 10-token warm-up (6 generated),
    then a 4-token generation that evaluated ``gen_prompt`` of its prompt's tokens."""
    warm = CallResult([1] * 6, "length", 10, 5.0, 5, 5.0, cached_tokens=warm_cached)
    ttft = CallResult([1], "length", 4, 1.0, 0, 0.0, cached_tokens=None)
    gen = CallResult([1] * 4, "length", gen_prompt, 1.0, 3, 3.0, cached_tokens=None)
    calls = [protocol.CallMeasurement(10.0, r) for r in (warm, ttft, gen)]
    return protocol.TrialMeasurement(cleared, *calls)


@pytest.mark.parametrize(
    ("cleared", "warm_cached", "verified"),
    [
        (-1, None, True),  # in-process: llama.cpp's positions prove the cache empty
        (None, 0, True),  # a server: its warm-up reused nothing
        (None, 7, False),  # a server that kept a prefix
        (None, None, False),  # a server that says neither: nothing proves it empty
        (12, None, False),  # the cache still held positions after clearing
    ],
)
def test_an_empty_cache_must_be_shown_not_assumed(cleared, warm_cached, verified):
    note = checks.check_trial(_trial(cleared, warm_cached), 4, 10, 4)
    assert (note == "") == verified, note


def test_an_engine_failure_during_the_cures_keeps_the_measured_cure_rows(
    tmp_path, model_path, monkeypatch
):
    """llama.cpp refusing a snapshot half-way through the cures: the trials and the cure
    rows measured before it are kept under incomplete/, and nothing is written in place."""
    from kvcache_exp.engines.base import EngineError
    from kvcache_exp.engines.llama_cpp_python import LlamaCppPython

    restore, calls = LlamaCppPython.restore, []

    def failing_restore(self, snapshot):
        calls.append(1)
        if len(calls) == 4:  # the fourth cure of the first trial
            raise EngineError("llama_state_seq_set_data could not restore the snapshot")
        return restore(self, snapshot)

    monkeypatch.setattr(LlamaCppPython, "restore", failing_restore)
    results, prompts = tmp_path / "r.csv", tmp_path / "p.csv"
    cures = tmp_path / "cures.csv"
    with pytest.raises(experiment.IncompleteRunError, match="4 cure rows"):
        experiment.run_experiment(model_path, _settings(), _files(results, prompts))
    kept = pd.read_csv(tmp_path / "incomplete" / cures.name)
    # the numerics row of the first trial, then the three cures restored before the failure
    assert list(kept["cure"])[0] == "cached_vs_full" and len(kept) == 4
    assert len(pd.read_csv(tmp_path / "incomplete" / results.name)) == 4
    assert not cures.exists() and not results.exists()


@pytest.mark.parametrize(("gen_prompt", "verified"), [(0, True), (1, True), (2, False)])
def test_the_generation_must_reuse_the_cached_prompt(gen_prompt, verified):
    """total_time_ms times a generation from the prompt the TTFT call cached: at most its
    last token may be evaluated again, or the total would include a prefill."""
    note = checks.check_trial(_trial(-1, None, gen_prompt), 4, 10, 4)
    assert (note == "") == verified, note


@pytest.mark.parametrize("expected_ttft", [3, 5])
def test_a_ttft_call_must_evaluate_exactly_what_the_condition_recomputes(expected_ttft):
    """The TTFT call of ``_trial`` evaluated 4 tokens. Fewer than the design requires (5: a
    miss that silently reused part of the cache) is as wrong as more (3: a hit that
    recomputed), and the note says which."""
    note = checks.check_trial(_trial(-1, None), expected_ttft, 10, 4)
    assert note == f"TTFT call evaluated 4 tokens, expected {expected_ttft}"
    assert checks.check_trial(_trial(-1, None), 4, 10, 4) == ""


def test_q_is_redrawn_when_it_starts_with_the_models_continuation(tmp_path):
    """make_prompts' one job beyond building: when the model would generate Q's first
    token after ``[A, B]``, a hit could reuse that generated token and evaluate one token
    less, so Q is drawn again. A tiny GPT-2 whose greedy token is always the first token
    of the seed's draft Q forces that case (the usual models almost never do)."""
    from gpt2_tiny import build_vocab, make_tiny_checkpoint, train_merges
    from llama_tiny import CORPUS

    from kvcache_exp.engines import open_engine
    from kvcache_exp.models.gpt2 import convert_gpt2_to_gguf

    settings = replace(_settings(), n_ctx=256, cures=False, keep_tokens=4)
    strings = {i: s for s, i in build_vocab(train_merges(CORPUS, 64)).items()}

    def engine_for(dominant: str | None, name: str):
        checkpoint = make_tiny_checkpoint(tmp_path / name, n_positions=256, dominant=dominant)
        return open_engine(convert_gpt2_to_gguf(checkpoint, tmp_path / f"{name}.gguf"), settings)

    first = engine_for(None, "any")
    try:
        draft = experiment.prompt_factory(first, settings)(0, settings.keep_tokens, None)
    finally:
        first.close()
    engine = engine_for(strings[draft.q.tokens[0]], "echo")
    try:
        following = experiment.next_token(engine, draft.warmup)
        assert following == draft.q.tokens[0]  # the case this test is about
        prompts = experiment.make_prompts(engine, settings)
    finally:
        engine.close()
    assert prompts.q.tokens[0] != following
    assert (prompts.s, prompts.a, prompts.b) == (draft.s, draft.a, draft.b)
    assert len(prompts.s.tokens) == 4
    assert len(prompts.q.tokens) == settings.query_tokens


def _server_calls(
    warm_cached: int = 0, warm_eval: int = 15, cached: int = 36, evaluated: int = 4, held=40
) -> dict:
    """A server cure trial whose counts match the design: a warm-up of 10 prompt tokens
    (6 generated, so 15 evaluated) that found nothing cached, then a call on a 40-token
    prompt that reused 36 and evaluated 4, sampling one token; the server then holds 40."""
    warm = CallResult([1] * 6, "length", 10, 5.0, warm_eval - 10, 5.0, cached_tokens=warm_cached)
    extra = {} if held is None else {"tokens_cached": held}
    call = CallResult([1], "length", evaluated, 1.0, 0, 0.0, cached_tokens=cached, extra=extra)
    return {
        "measured": protocol.CallMeasurement(10.0, call),
        "expected_eval": 4,
        "expected_cached": 36,
        "warm": protocol.CallMeasurement(10.0, warm),
        "warm_prompt": 10,
        "prompt": 40,
    }


@pytest.mark.parametrize(
    ("changed", "note"),
    [
        ({}, ""),
        ({"held": None}, ""),  # a server that does not say what it holds
        ({"warm_cached": 3}, "the warm-up found 3 tokens cached after clearing"),
        ({"warm_eval": 14}, "the warm-up evaluated 14 tokens, expected 15"),
        ({"evaluated": 5}, "the call evaluated 5 tokens, expected 4"),
        ({"evaluated": 3}, "the call evaluated 3 tokens, expected 4"),
        ({"cached": 35}, "the server reused 35 cached tokens, expected 36"),
        ({"cached": 37}, "the server reused 37 cached tokens, expected 36"),
        ({"held": 41}, "the server holds 41 tokens after the call, expected 40"),
    ],
)
def test_a_server_cure_is_checked_by_the_servers_own_counts(changed, note):
    assert checks.check_server_cure(**_server_calls(**changed)) == note


def test_a_server_cure_that_sampled_more_than_one_token_is_caught():
    calls = _server_calls()
    two = replace(calls["measured"].result, tokens=[1, 2])
    calls["measured"] = protocol.CallMeasurement(10.0, two)
    assert checks.check_server_cure(**calls) == "the call sampled 2 tokens, expected 1"
    both = _server_calls(warm_cached=1, cached=0)
    assert checks.check_server_cure(**both) == (
        "the warm-up found 1 tokens cached after clearing; "
        "the server reused 0 cached tokens, expected 36"
    )


def _calls(**changes) -> protocol.TrialMeasurement:
    """``_trial(-1, None)`` with some of its calls' counts changed: ``warm_eval``,
    ``ttft_sampled``, ``ttft_cached``, ``gen_tokens``, ``gen_eval``, ``cleared``."""
    warm = CallResult([1] * 6, "length", 10, 5.0, changes.get("warm_eval", 15) - 10, 5.0)
    ttft = CallResult(
        [1] * changes.get("ttft_sampled", 1), "length", 4, 1.0, 0, 0.0,
        cached_tokens=changes.get("ttft_cached"),
    )  # fmt: skip
    n_gen = changes.get("gen_tokens", 4)
    gen = CallResult([1] * n_gen, "length", 0, 1.0, changes.get("gen_eval", n_gen - 1), 3.0)
    calls = [protocol.CallMeasurement(10.0, r) for r in (warm, ttft, gen)]
    return protocol.TrialMeasurement(changes.get("cleared", -1), *calls)


@pytest.mark.parametrize(
    ("changes", "expected_cached", "note"),
    [
        ({}, None, ""),
        ({"ttft_cached": 9}, None, ""),  # nothing expected: the engine's count is not checked
        ({"ttft_cached": 10}, 10, ""),
        ({"ttft_cached": 9}, 10, "TTFT call reused 9 cached tokens, expected 10"),
        ({"ttft_cached": 11}, 10, "TTFT call reused 11 cached tokens, expected 10"),
        ({"warm_eval": 14}, None, "warm-up evaluated 14 tokens, expected 15"),
        ({"ttft_sampled": 2}, None, "TTFT call sampled 2 tokens, expected 1"),
        ({"gen_tokens": 5}, None, "generation produced 5 tokens, more than max_tokens=4"),
        (
            {"gen_eval": 5},
            None,
            "generation evaluated 2 of its prompt's tokens again, expected at most 1 (the "
            "prompt was cached by the TTFT call)",
        ),
        (
            {"cleared": None},
            None,
            "nothing shows the cache was empty: the engine reports neither its positions nor "
            "the warm-up's reused tokens",
        ),
        (
            {"cleared": 3, "ttft_sampled": 0},
            None,
            "the cache was not empty after clearing (highest position 3); TTFT call sampled 0 "
            "tokens, expected 1",
        ),
    ],
)
def test_each_contradiction_of_a_trial_is_named(changes, expected_cached, note):
    """Every check of check_trial with its exact note, one contradiction at a time (and
    two together, joined by '; ')."""
    found = checks.check_trial(_calls(**changes), 4, 10, 4, expected_cached=expected_cached)
    assert found == note


@pytest.mark.parametrize(
    ("tokens", "reason", "evaluated"),
    [(3, "stop", 13), (3, "length", 12), (1, "length", 10), (0, "length", 10), (0, "stop", 10)],
)
def test_a_generation_evaluates_its_prompt_and_each_token_before_the_next(
    tokens, reason, evaluated
):
    """EOS (``stop``) was evaluated like every generated token; the last token of a
    generation cut by max_tokens (``length``) was sampled, never evaluated."""
    call = protocol.CallMeasurement(1.0, CallResult([7] * tokens, reason, 0, 0.0, 0, 0.0))
    assert checks.evaluated_by_generation(10, call) == evaluated


def _cure_call(evaluated: int = 4, sampled: int = 1, **extra) -> protocol.CallMeasurement:
    return protocol.CallMeasurement(
        1.0, CallResult([1] * sampled, "length", evaluated, 1.0, 0, 0.0, extra=extra)
    )


@pytest.mark.parametrize(
    ("changes", "note"),
    [
        ({}, ""),
        ({"removals_done": True}, ""),
        ({"restored": 18}, "the restored cache ends at position 18, expected 19"),
        ({"evaluated": 5}, "the call evaluated 5 tokens, expected 4"),
        ({"sampled": 2}, "the call sampled 2 tokens, expected 1"),
        ({"removals_done": False}, "llama.cpp refused a cell removal the cure asked for"),
        ({"pos_min": 2}, "the cache's lowest position is 2 after the call, expected 0"),
        ({"positions": None}, "the cache's cells could not be read from llama.cpp's state"),
        (
            {"positions": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 12]},
            "the cache holds 12 cells at positions 0..12, 1 positions held twice, expected "
            "12 cells at 0..11",
        ),
        (
            {"positions": []},
            "the cache holds 0 cells at positions none, expected 12 cells at 0..11",
        ),
        (
            {"restored": 0, "sampled": 0},
            "the restored cache ends at position 0, expected 19; the call sampled 0 tokens, "
            "expected 1",
        ),
    ],
)
def test_each_contradiction_of_an_in_process_cure_is_named(changes, note):
    """check_cure's every check with its exact note: a warm snapshot of 20 tokens, a call
    that must evaluate 4 and leave the 12-token prompt at positions 0..11, one cell each."""
    call_args = {
        k: changes.pop(k) for k in ("evaluated", "sampled", "removals_done") if k in changes
    }
    removals = (
        {"removals_done": call_args.pop("removals_done")} if "removals_done" in call_args else {}
    )
    args = {"restored": 19, "warm_held": 20, "pos_min": 0, "positions": list(range(12))}
    args |= changes
    found = checks.check_cure(_cure_call(**call_args, **removals), 4, prompt=12, **args)
    assert found == note


def test_the_full_recompute_must_hold_its_tokens_from_position_0():
    assert checks.check_cached_vs_full(0, list(range(5)), 5) == ""
    assert checks.check_cached_vs_full(1, [1, 2, 3, 4, 5], 5) == (
        "its lowest position is 1, expected 0; the cache holds 5 cells at positions 1..5, "
        "expected 5 cells at 0..4"
    )
    assert checks.check_cached_vs_full(0, [0, 1, 2], 5) == (
        "the cache holds 3 cells at positions 0..2, expected 5 cells at 0..4"
    )


def test_the_prompts_are_built_as_the_settings_say(engine, tmp_path):
    """prompt_factory passes every setting on to build_prompts (the sizes, the user's
    text, the kept prefix, the variant of quality_prompts); make_prompts takes variant 0
    with keep_tokens of kept prefix."""
    from kvcache_exp.measure.prompts import read_source_text

    path = tmp_path / "story.txt"
    path.write_text(" ".join(f"word{i % 11} and some more text here." for i in range(600)))
    settings = _settings(prompt_text_file=str(path), keep_tokens=4, quality_prompts=3)
    build = experiment.prompt_factory(engine, settings)
    expected = build_prompts(
        engine.tokenize,
        24,
        12,
        settings.query_tokens,
        source_text=read_source_text(path),
        size_s=8,
        variant=1,
        variants=3,
    )
    assert build(1, 8, None) == expected
    seed = experiment.make_prompts(engine, settings)
    assert len(seed.s.tokens) == 4
    assert seed in (build(0, 4, None), build(0, 4, experiment.next_token(engine, seed.warmup)))
    assert seed != build(1, 4, None)
