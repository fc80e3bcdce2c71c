"""Bad input, faults and interruptions: a clear message before expensive work, and
nothing already measured lost."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from workflow_copy import REPO, copy_workflow, job_counts, run_cli, snakemake, write_config

from kvcache_exp import outputs

MODEL_FILE = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, model_path) -> Path:
    """A copy of the workflow whose model is the embedded model, given by path."""
    return copy_workflow(tmp_path_factory.mktemp("errors") / "repo")


CONFIG_CASES = {
    "negative size": (
        {"experiments": [{"size_a": -5, "size_b": 10}]},
        "experiments[0] (size_a=-5, size_b=10).size_a: -5 is less than the minimum of 1",
    ),
    "non-integer size": (
        {"experiments": [{"size_a": 3.5, "size_b": 10}]},
        "experiments[0] (size_a=3.5, size_b=10).size_a: 3.5 is not of type 'integer'",
    ),
    "B of 0": (
        {"experiments": [{"size_a": 5, "size_b": 0}]},
        "experiments[0] (size_a=5, size_b=0).size_b: 0 is less than the minimum of 1",
    ),
    "trials below 1": ({"trials": 0}, "trials: 0 is less than the minimum of 1"),
    "max_tokens below 1": ({"max_tokens": 0}, "max_tokens: 0 is less than the minimum of 1"),
    "warmup_tokens below 1": (
        {"warmup_tokens": 0},
        "warmup_tokens: 0 is less than the minimum of 1",
    ),
    "per-experiment trials below 1": (
        {"experiments": [{"size_a": 8, "size_b": 8, "trials": 0}]},
        "experiments[0] (size_a=8, size_b=8).trials: 0 is less than the minimum of 1",
    ),
    "longer than n_ctx": (
        {"experiments": [{"size_a": 1500, "size_b": 500}]},
        "experiments[0] (size_a=1500, size_b=500): the hit prompt (A+B+Q = 1500+500+16) plus "
        "max_tokens=50 needs 2066 tokens, more than n_ctx=2048",
    ),
    "longer than the model's trained context": (
        {"n_ctx": 16384, "experiments": [{"size_a": 8000, "size_b": 500}]},
        "needs 8566 tokens of context, more than SmolLM2-135M-Instruct.Q4_1 was trained for "
        "(8192 tokens, from its GGUF metadata)",
    ),
    "longer than GPT-2's context, before it is downloaded": (
        {"model": "gpt2", "experiments": [{"size_a": 700, "size_b": 300}]},
        "needs 1066 tokens of context, more than gpt2 was trained for (1024 tokens, from the "
        "model catalog)",
    ),
    "unknown model name": (
        {"model": "gpt-17"},
        "model: unknown model name 'gpt-17'; known: distilgpt2, gpt2, gpt2-medium, "
        "smollm2-135m-instruct-q4_1",
    ),
    "model path that does not exist": (
        {"model": "models/absent.gguf"},
        "model: the model file models/absent.gguf does not exist",
    ),
    "duplicate experiments": (
        {"experiments": [{"size_a": 8, "size_b": 8}, {"size_a": 8, "size_b": 8}]},
        "experiments[1] (size_a=8, size_b=8): duplicate of experiments[0]",
    ),
    "unknown key": ({"trails": 5}, "unknown key 'trails'; did you mean 'trials'?"),
    "prompt text file that does not exist": (
        {"prompt_text_file": "nowhere.txt"},
        "prompt_text_file: nowhere.txt does not exist",
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_configuration_is_rejected_before_any_job(workdir, case):
    values, message = CONFIG_CASES[case]
    if "model" not in values:
        values = {"model": str(MODEL_FILE), **values}
    write_config(workdir, "case.yaml", values)
    proc = snakemake(workdir, "-n", "--configfile", "case.yaml", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Invalid configuration" in out
    assert message in out
    assert "Job stats" not in out
    assert not (workdir / "results").exists()


def test_a_target_named_on_the_command_line_gets_the_same_checks(workdir, model_path):
    """A configuration asked for by its file name, absent from config.yaml, is checked
    against n_ctx and the model's trained context before anything runs."""
    write_config(workdir, "wide.yaml", {"model": str(model_path), "n_ctx": 16384})
    proc = snakemake(
        workdir,
        "results/results_phase3b_a8000_b500.csv",
        "-n",
        "--configfile",
        "wide.yaml",
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "needs 8566 tokens of context, more than SmolLM2-135M-Instruct.Q4_1 was trained" in out


def test_model_that_is_not_gguf_is_rejected(workdir, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("<html>Not Found</html>")
    write_config(workdir, "case.yaml", {"model": str(fake)})
    proc = snakemake(workdir, "-n", "--configfile", "case.yaml", check=False)
    assert proc.returncode != 0
    assert f"model file {fake} is not a GGUF file" in proc.stdout + proc.stderr


def test_truncated_model_gives_a_clear_error_not_a_crash(tmp_path, model_path):
    truncated = tmp_path / "truncated.gguf"
    with open(model_path, "rb") as src:
        truncated.write_bytes(src.read(4_000_000))
    proc = run_cli(
        "--size-a",
        "8",
        "--size-b",
        "8",
        "--model",
        str(truncated),
        "--results-dir",
        str(tmp_path / "r"),
        "--prompts-dir",
        str(tmp_path / "p"),
    )
    assert proc.returncode == 2
    assert f"llama.cpp could not load {truncated}" in proc.stderr
    assert "truncated or corrupt" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_prompt_text_too_short_names_the_shortfall(tmp_path, model_path):
    text = tmp_path / "short.txt"
    text.write_text("A short story about a cat. " * 12)  # enough for A alone
    proc = run_cli(
        "--size-a",
        "64",
        "--size-b",
        "64",
        "--model",
        str(model_path),
        "--prompt-text-file",
        str(text),
        "--trials",
        "1",
        "--settle-ms",
        "0",
        "--results-dir",
        str(tmp_path / "r"),
        "--prompts-dir",
        str(tmp_path / "p"),
    )
    assert proc.returncode == 2
    assert "too short for context B: it gave" in proc.stderr
    assert "of the 64 tokens needed (A, B and Q need 144 tokens in all" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_empty_prompt_text_file(tmp_path, model_path):
    text = tmp_path / "empty.txt"
    text.write_text("")
    proc = run_cli(
        "--size-a",
        "8",
        "--size-b",
        "8",
        "--model",
        str(model_path),
        "--prompt-text-file",
        str(text),
    )
    assert proc.returncode == 2
    assert f"prompt text file {text} is empty" in proc.stderr


def test_full_disk_fails_clearly_and_keeps_earlier_results(tmp_path, monkeypatch):
    target = tmp_path / "results.csv"
    target.write_text("trial,condition\n1,hit\n")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs.os, "fsync", no_space)
    with pytest.raises(outputs.OutputError, match=f"cannot write {target}: No space left"):
        outputs.write_csv(pd.DataFrame({"trial": [2], "condition": ["miss"]}), target)
    assert target.read_text() == "trial,condition\n1,hit\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_unwritable_location_fails_clearly(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(outputs.OutputError, match=r"cannot write .*results/x.csv"):
        outputs.write_csv(pd.DataFrame({"a": [1]}), blocker / "x.csv")
    assert blocker.read_text() == "a file where a folder should be"


def _experiment_config(**extra) -> dict:
    """A small run: these tests are about the experiment jobs, not the cures (which an
    interrupted run would otherwise keep measuring in the orphaned job for minutes) nor
    the conversation replay (whose six default jobs could run first)."""
    return {
        "model": str(MODEL_FILE),
        "trials": 2,
        "settle_ms": 0,
        "n_threads": 2,
        "cures": False,
        "conversations": {"enabled": False},
        **extra,
    }


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_experiment_loses_nothing_finished(tmp_path, model_path, sig):
    workdir = copy_workflow(tmp_path / "repo")
    fast, slow = {"size_a": 16, "size_b": 16}, {"size_a": 24, "size_b": 24}
    config = _experiment_config(experiments=[fast, {**slow, "trials": 3, "settle_ms": 1000}])
    write_config(workdir, "run.yaml", config)
    # Run the fast experiment first, on its own, so that it is finished for sure.
    snakemake(workdir, "results/results_phase3b_a16_b16.csv", "--configfile", "run.yaml")
    done = workdir / "results/results_phase3b_a16_b16.csv"
    done_stamp, done_bytes = done.stat().st_mtime_ns, done.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--configfile", "run.yaml"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # A background job of a non-interactive shell (`nohup make test &`) inherits
        # SIGINT ignored, and so would snakemake: give it the default disposition.
        preexec_fn=_default_sigint,
    )
    log = workdir / "logs/experiment/a24_b24.log"
    deadline = time.monotonic() + 120
    try:
        while not (log.exists() and "trial 1 hit" in log.read_text()):
            assert proc.poll() is None, "snakemake ended before the experiment was interrupted"
            assert time.monotonic() < deadline, "the experiment did not start its trials"
            time.sleep(0.2)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)  # leave no orphaned job measuring for minutes
        raise
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)
    for name in ("results/results_phase3b_a24_b24.csv", "prompts/prompts_phase3b_a24_b24.csv"):
        assert not (workdir / name).exists(), name
    leftovers = [p.name for p in (workdir / "results").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    if sig == signal.SIGKILL:  # snakemake had no chance to release its lock
        snakemake(workdir, "--unlock", "--configfile", "run.yaml")
    dry = snakemake(workdir, "-n", "--configfile", "run.yaml")
    out = dry.stdout + dry.stderr
    assert job_counts(out).get("run_experiment") == 1
    assert "wildcards: size_a=24, size_b=24" in out
    snakemake(workdir, "--configfile", "run.yaml", "--rerun-incomplete")
    assert len(pd.read_csv(workdir / "results/results_phase3b_a24_b24.csv")) == 6
    assert done.stat().st_mtime_ns == done_stamp
    assert done.read_bytes() == done_bytes


def _job_spans(workdir: Path, experiments: list[dict]) -> list[tuple[float, float]]:
    """(start, end) in Unix seconds of each experiment job, from its provenance record."""
    spans = []
    for exp in experiments:
        record = workdir / f"results/run_phase3b_a{exp['size_a']}_b{exp['size_b']}.json"
        data = json.loads(record.read_text())
        spans.append((data["start_unix"], data["end_unix"]))
    return sorted(spans)


def _overlaps(spans: list[tuple[float, float]]) -> bool:
    pairs = zip(spans, spans[1:], strict=False)
    return any(end > next_start for (_, end), (next_start, _) in pairs)


@pytest.mark.slow
@pytest.mark.parametrize("gpus", [1, 2])
def test_one_experiment_on_the_gpu_at_a_time(tmp_path, model_path, gpus):
    """Each experiment takes one thread, so four cores could run four at once: only the
    gpu resource keeps them apart; with two GPUs they do overlap (the control)."""
    workdir = copy_workflow(tmp_path / "repo")
    experiments = [{"size_a": a, "size_b": b} for a, b in ((8, 8), (16, 8), (8, 16), (16, 16))]
    config = _experiment_config(experiments=experiments, trials=1, experiment_threads=1)
    config.pop("n_threads")
    write_config(workdir, "run.yaml", config)
    resources = f"gpu={gpus}"
    snakemake(workdir, "--cores", "4", "--resources", resources, "--configfile", "run.yaml")
    spans = _job_spans(workdir, experiments)
    if gpus == 1:
        assert not _overlaps(spans), f"experiments overlapped: {spans}"
    else:
        assert _overlaps(spans), f"with two GPUs no experiments overlapped: {spans}"
