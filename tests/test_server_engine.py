"""The experiment through a server: llama.cpp's own llama-server, started on 127.0.0.1.

Nothing is mocked. These tests start the llama-server that `make server` builds (from the
same llama.cpp source as llama-cpp-python) with the embedded model, and check:

* the whole workflow with ``engine: llama_server``: every hit and miss verified from the
  server's own counts (``timings.cache_n`` / ``prompt_n``), and its cures (hit, miss and
  llama-server's cache reuse) in the cures CSV;
* that the server's cache reuse evaluates the same tokens as our in-process shift;
* that a server that is down, slow to start, cannot start, cannot clear its cache, answers
  an error or dies mid-run gives one clear message, and that nothing measured is lost.

Without the binary they are skipped: run `make server`.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from workflow_copy import REPO, copy_workflow, small_config, snakemake, write_config

from kvcache_exp.columns import CURE_COLUMNS, RESULT_COLUMNS
from kvcache_exp.config.settings import merge
from kvcache_exp.engines import managed_server
from kvcache_exp.engines.base import EngineError
from kvcache_exp.engines.llama_server import start_llama_server
from kvcache_exp.engines.managed_server import ManagedServer, ServerError, free_port
from kvcache_exp.engines.openai_http import OpenAIHTTP
from kvcache_exp.measure import protocol
from kvcache_exp.measure.experiment import IncompleteRunError, run_experiment
from kvcache_exp.measure.prompts import build_prompts
from kvcache_exp.paths import ConfigurationFiles, Layout

SERVER = REPO / "build" / "llama.cpp" / "bin" / "llama-server"

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        not (SERVER.is_file() and os.access(SERVER, os.X_OK)),
        reason=f"llama-server is not built ({SERVER}): run `make server`",
    ),
]

THREADS = min(2, os.cpu_count() or 1)
QUERY = 16
KEEP = 8  # a kept prefix S, so that A is removed from the middle and a miss reuses S
SMALL = {"max_tokens": 8, "quality_tokens": 8, "keep_tokens": KEEP}


def settings_for(tmp: Path, **values):
    """Experiment settings for a direct run (no Snakemake): small, 2 trials, no settle."""
    config = {**small_config(), **SMALL, **values}
    config.pop("experiments", None)
    return merge(config, {"size_a": 64, "size_b": 32}, n_threads=THREADS)


def outputs(tmp: Path) -> ConfigurationFiles:
    """The four files of the a64_b32 configuration, laid out as the workflow does."""
    return Layout(results=str(tmp / "results"), prompts=str(tmp / "prompts")).configuration(
        "a64_b32"
    )


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


# --------------------------------------------------------------------------- workflow


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory, model_path: Path) -> Iterator[tuple[Path, dict, str]]:
    """The whole workflow with ``engine: llama_server`` on the embedded model."""
    workdir = copy_workflow(tmp_path_factory.mktemp("wf-server") / "repo")
    config = {**small_config(), **SMALL, "model": str(model_path), "engine": "llama_server"}
    write_config(workdir, "server.yaml", config)
    with pytest.MonkeyPatch.context() as mp:
        # The copy has no build/: point it at the server `make server` built.
        mp.setenv(managed_server.ENV_VAR, str(SERVER))
        proc = snakemake(
            workdir, "--cores", "2", "--resources", "gpu=1", "--configfile", "server.yaml"
        )
    yield workdir, config, proc.stdout + proc.stderr


def test_workflow_through_the_server_verifies_every_trial(workflow_run) -> None:
    workdir, config, _ = workflow_run
    for exp in config["experiments"]:
        a, b = exp["size_a"], exp["size_b"]
        df = pd.read_csv(workdir / f"results/results_phase3b_a{a}_b{b}.csv")
        assert list(df.columns) == list(RESULT_COLUMNS)
        assert len(df) == 2 * config["trials"]
        # cache_verified includes the server's reused-token count (hit: S+A+B, miss: S).
        assert df["cache_verified"].all(), df["cache_note"].dropna().tolist()
        # A server shows no cache positions; the warm-up's reused count proves it empty.
        assert df["cleared_pos_max"].isna().all()
        hit, miss = df[df.condition == "hit"], df[df.condition == "miss"]
        assert set(hit["ttft_prefill_tokens"]) == {QUERY}  # the server's prompt_n
        assert set(miss["ttft_prefill_tokens"]) == {b + QUERY}
        assert set(df["ttft_decode_tokens"]) == {0}
        assert set(df["warmup_eval_tokens"]) == {KEEP + a + b + 6 - 1}
        # The server's own prompt time sits beside the wall time; the rest is HTTP.
        assert (df["ttft_prefill_ms"] > 0).all() and (df["ttft_overhead_ms"] > 0).all()
        assert (df["ttft_ms"] > df["ttft_prefill_ms"]).all()

        record = json.loads((workdir / f"results/run_phase3b_a{a}_b{b}.json").read_text())
        engine = record["engine"]
        assert engine["engine"] == "llama_server" and engine["server"]["build_info"]
        assert record["settings"]["engine"] == "llama_server"
        command = engine["server_command"]
        assert f"--threads {THREADS} --threads-batch {THREADS}" in command
        assert "--flash-attn off --cache-type-k f16 --cache-type-v f16 --cache-ram 0" in command


def test_workflow_measures_the_server_cure(workflow_run) -> None:
    workdir, config, output = workflow_run
    # Every cure's log line formats, the hit's missing quality included (it once logged
    # "--- Logging error ---" with a traceback for a NaN given to %d).
    assert "Logging error" not in output
    for exp in config["experiments"]:
        a, b = exp["size_a"], exp["size_b"]
        log = (workdir / f"logs/experiment/a{a}_b{b}.log").read_text()
        assert "Logging error" not in log and "Traceback" not in log
        assert "server cure S=0 trial 1 hit" in log and "first_divergence=n/a" in log
        df = pd.read_csv(workdir / f"results/cures_phase3b_a{a}_b{b}.csv")
        assert list(df.columns) == list(CURE_COLUMNS)
        trials = df
        runs = len(config["cure_keep_tokens"]) * config["quality_prompts"]
        assert sorted(trials["cure"].value_counts().items()) == [
            ("hit", runs),
            ("miss", runs),
            ("server_cache_reuse", runs),
        ]
        assert df["cache_verified"].all(), df["cache_note"].dropna().tolist()
        expected = {"hit": QUERY, "miss": b + QUERY, "server_cache_reuse": QUERY}
        for row in trials.itertuples():
            assert row.prefill_tokens + row.decode_tokens == expected[row.cure]
        assert set(df["position_correction"]) == {"rope"}
        # The miss is the full recompute: its continuation is the reference's.
        miss = trials[trials.cure == "miss"]
        assert (miss["first_divergence"] == miss["quality_positions"]).all()
        assert trials.loc[trials.cure != "hit", "kl_mean"].isna().all()
    summary = pd.read_csv(workdir / "results/cures_summary.csv")
    assert "server_cache_reuse" in set(summary["cure"])
    assert (workdir / "results/summary.csv").stat().st_size > 0


def test_parsing_never_contacts_a_server(workflow_run, tmp_path: Path) -> None:
    """A dry run with an external server that does not exist parses and plans."""
    workdir, config, _ = workflow_run
    closed = f"http://127.0.0.1:{free_port()}"
    external = {**config, "engine": "openai_http", "server": {"base_url": closed}}
    write_config(workdir, "external.yaml", external)
    proc = snakemake(workdir, "-n", "--configfile", "external.yaml")
    out = proc.stdout + proc.stderr
    assert "run_experiment" in out  # the engine is a setting: changing it reruns them


# --------------------------------------------------------------------------- cache reuse


def test_server_cache_reuse_evaluates_what_the_in_process_shift_does(
    engine, model_path: Path
) -> None:
    """llama-server's --cache-reuse and our in-process shift keep the same tokens (S and B,
    B moved back by |A|) and evaluate the same ones (Q) for the same prompts."""
    prompts = build_prompts(engine.tokenize, 64, 48, QUERY, size_s=KEEP)
    server = start_llama_server(
        model_path,
        threads=THREADS,
        n_ctx=512,
        n_batch=512,
        n_gpu_layers=0,
        flash_attn=False,
        cache_type_k="f16",
        cache_type_v="f16",
    )
    try:
        for name in ("warmup", "hit", "miss"):
            assert server.tokenize(prompts.text(name)) == prompts.tokens(name)

        engine.clear()
        warm = engine.generation(prompts.warmup, 6)
        warm.run()
        warm.result()
        local = protocol.timed(engine.shifted_first_token(prompts.miss, prompts.removed))

        server.clear()
        warm = server.generation(prompts.warmup, 6)
        warm.run()
        warm.result()
        remote = protocol.timed(server.first_token(prompts.miss, n_cache_reuse=16))

        assert local.eval_tokens == remote.eval_tokens == QUERY
        assert local.result.cached_tokens == remote.result.cached_tokens == KEEP + 48
        # Without reuse the same request is a miss: B and Q are evaluated again.
        server.clear()
        warm = server.generation(prompts.warmup, 6)
        warm.run()
        warm.result()
        miss = protocol.timed(server.first_token(prompts.miss))
        assert (miss.eval_tokens, miss.result.cached_tokens) == (48 + QUERY, KEEP)
    finally:
        server.close()
        engine.clear()


# --------------------------------------------------------------------------- external


def test_external_server_through_the_openai_api(tmp_path: Path, model_path: Path) -> None:
    """engine openai_http, api openai, against a llama-server someone else started: the
    counts come from /v1/completions (usage.prompt_tokens_details.cached_tokens, and
    llama-server's timings beside it); the server is left running; no cure is defined
    for the OpenAI API, so the cures CSV has only its header."""
    with ManagedServer(model_path, threads=THREADS, n_ctx=512) as srv:
        server = {"base_url": srv.base_url + "/v1", "api": "openai"}
        settings = settings_for(tmp_path, engine="openai_http", server=server)
        run_experiment(model_path, settings, outputs(tmp_path))
        assert srv.is_running()
    results_csv, _, record_json, cures_csv = outputs(tmp_path)
    df = pd.read_csv(results_csv)
    assert df["cache_verified"].all(), df["cache_note"].dropna().tolist()
    assert set(df.loc[df.condition == "hit", "ttft_prefill_tokens"]) == {QUERY}
    assert set(df.loc[df.condition == "miss", "ttft_prefill_tokens"]) == {32 + QUERY}
    engine = json.loads(record_json.read_text())["engine"]
    assert engine["engine"] == "openai_http" and engine["server"]["api"] == "openai"
    assert engine["server_url"] == srv.base_url  # the /v1 suffix is dropped
    assert pd.read_csv(cures_csv).empty


# --------------------------------------------------------------------------- failures


def test_external_server_that_is_down(tmp_path: Path, model_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    settings = settings_for(tmp_path, engine="openai_http", server={"base_url": closed})
    with pytest.raises(EngineError) as caught:
        run_experiment(model_path, settings, outputs(tmp_path))
    message = str(caught.value)
    assert f"cannot reach the server at {closed}" in message
    assert "connection refused" in message
    assert files_under(tmp_path) == []  # nothing final, nothing partial: nothing measured


def test_managed_server_too_slow_to_start(tmp_path: Path, model_path: Path) -> None:
    settings = settings_for(tmp_path, engine="llama_server", server={"startup_timeout_s": 0.001})
    with pytest.raises(ServerError, match=r"not healthy within 0\.001 s"):
        run_experiment(model_path, settings, outputs(tmp_path))
    assert files_under(tmp_path) == []


def test_managed_server_that_cannot_load_the_model(tmp_path: Path) -> None:
    not_a_model = tmp_path / "not-a-model.gguf"
    not_a_model.write_bytes(b"this is not a GGUF file\n" * 64)
    settings = settings_for(tmp_path, engine="llama_server")
    with pytest.raises(ServerError) as caught:
        run_experiment(not_a_model, settings, outputs(tmp_path / "out"))
    message = str(caught.value)
    assert "llama-server exited while starting" in message and "log " in message
    assert files_under(tmp_path / "out") == []


def test_server_that_cannot_clear_its_cache_stops_the_run(tmp_path: Path, model_path: Path) -> None:
    """A llama-server started by hand without --slot-save-path cannot erase its slot: the
    run stops before measuring, rather than timing warm caches as cold ones."""
    with ManagedServer(model_path, threads=THREADS, n_ctx=512, slot_save=False) as srv:
        settings = settings_for(tmp_path, engine="openai_http", server={"base_url": srv.base_url})
        with pytest.raises(EngineError) as caught:
            run_experiment(model_path, settings, outputs(tmp_path))
    message = str(caught.value)
    assert "cannot clear its cache: POST /slots/0?action=erase answered HTTP 501" in message
    assert "--slot-save-path" in message and "server.cache_clear" in message
    assert files_under(tmp_path) == []


def test_an_error_answer_is_one_clear_message(model_path: Path) -> None:
    with ManagedServer(model_path, threads=THREADS, n_ctx=512) as srv:
        engine = OpenAIHTTP(srv.base_url)
        call = engine.first_token([10**7])  # no such token
        with pytest.raises(EngineError) as caught:
            call.run()
            call.result()
        engine.close()
    message = str(caught.value)
    assert f"the server at {srv.base_url}: POST /completion" in message
    assert "answered HTTP 400" in message and "invalid tokens" in message


def test_server_killed_mid_run_keeps_the_measured_rows(
    tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server is killed (SIGKILL) after the first trial's hit and miss: those two
    rows are kept under results/incomplete/, and the error names the server, the request
    that failed, how the server ended, its log, and where the rows went."""
    real_run_trial = protocol.run_trial
    done: list[int] = []

    def run_trial_then_kill(engine: OpenAIHTTP, *args, **kwargs):
        measured = real_run_trial(engine, *args, **kwargs)
        done.append(1)
        if len(done) == 2:
            assert engine.managed is not None and engine.managed.pid is not None
            os.kill(engine.managed.pid, signal.SIGKILL)
        return measured

    monkeypatch.setattr(protocol, "run_trial", run_trial_then_kill)
    settings = settings_for(tmp_path, engine="llama_server")
    results_csv, prompts_csv, record_json, cures_csv = outputs(tmp_path)
    with pytest.raises(IncompleteRunError) as caught:
        run_experiment(model_path, settings, outputs(tmp_path))

    message = str(caught.value)
    side = results_csv.parent / "incomplete"
    assert "llama-server exited" in message and "killed by signal 9" in message
    # The request that met the dead server (here the first trial's sample, /detokenize).
    assert re.search(
        r"POST /\S+ to llama-server \(managed, pid \d+\) at http://127\.0\.0\.1:", message
    )
    assert "log " in message
    assert f"2 trials and 0 cure rows measured before the failure were kept in {side}" in message
    kept = pd.read_csv(side / results_csv.name)
    assert list(kept["condition"]) == ["hit", "miss"] and kept["cache_verified"].all()
    assert json.loads((side / record_json.name).read_text())["error"]
    assert (side / prompts_csv.name).is_file() and (side / cures_csv.name).is_file()
    assert not results_csv.exists() and not cures_csv.exists() and not prompts_csv.exists()
