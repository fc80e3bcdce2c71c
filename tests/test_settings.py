"""Settings: per-experiment overrides and sweeps."""

from __future__ import annotations

import pytest
import yaml
from workflow_copy import copy_workflow, job_counts, snakemake, write_config

from kvcache_exp.config.settings import SettingsError, check_experiments, expand_experiments, merge


def test_per_experiment_overrides_win_over_globals():
    config = {"trials": 10, "settle_ms": 500, "n_ctx": 4096}
    s = merge(config, {"size_a": 8, "size_b": 4, "trials": 3}, n_threads=2)
    assert (s.trials, s.settle_ms, s.n_ctx, s.n_threads, s.tag) == (3, 500, 4096, 2, "a8_b4")


def test_sweep_over_b_at_fixed_a():
    exps = expand_experiments(
        {
            "experiments": {
                "sweep": {"size_a": 256, "size_b": {"start": 64, "stop": 256, "step": 64}}
            }
        }
    )
    assert exps == [{"size_a": 256, "size_b": b} for b in (64, 128, 192, 256)]


def test_sweep_at_fixed_total():
    exps = expand_experiments({"experiments": {"sweep": {"total": 768, "size_b": [256, 384, 512]}}})
    assert exps == [
        {"size_b": 256, "size_a": 512},
        {"size_b": 384, "size_a": 384},
        {"size_b": 512, "size_a": 256},
    ]


def test_sweep_needs_both_axes():
    with pytest.raises(SettingsError, match="give size_a and size_b"):
        expand_experiments({"experiments": {"sweep": {"size_a": 8}}})
    problems = check_experiments({"experiments": {"sweep": {"total": 8, "size_a": 2, "size_b": 6}}})
    assert problems == ["experiments.sweep: with `total`, give exactly one of size_a and size_b"]


def test_a_sweep_that_leaves_a_empty_is_rejected():
    problems = check_experiments({"experiments": {"sweep": {"total": 64, "size_b": [32, 64]}}})
    assert problems == [
        "experiments[1] (size_a=0, size_b=64): size_a must be an integer >= 1, got 0"
    ]


def test_a_sweep_that_leaves_b_empty_is_rejected():
    """The B side of the same check: a fixed total given by A, whose last point takes all
    of it, leaves B empty (nothing between the removed context and the query)."""
    problems = check_experiments({"experiments": {"sweep": {"total": 64, "size_a": [32, 64]}}})
    assert problems == [
        "experiments[1] (size_a=64, size_b=0): size_b must be an integer >= 1, got 0"
    ]


def test_sweep_makes_one_job_per_point(tmp_path, model_path):
    workdir = copy_workflow(tmp_path / "repo")
    sweep = {"size_a": 64, "size_b": {"start": 32, "stop": 160, "step": 32}}
    write_config(workdir, "sweep.yaml", {"model": str(model_path), "experiments": {"sweep": sweep}})
    proc = snakemake(workdir, "-n", "--configfile", "sweep.yaml")
    out = proc.stdout + proc.stderr
    assert job_counts(out)["run_experiment"] == 5
    for b in (32, 64, 96, 128, 160):
        assert f"results/results_phase3b_a64_b{b}.csv" in out


def test_prompt_text_file_is_an_input_of_every_experiment(tmp_path, model_path):
    workdir = copy_workflow(tmp_path / "repo")
    (workdir / "story.txt").write_text("Once upon a time there was a long story. " * 300)
    write_config(workdir, "text.yaml", {"model": str(model_path), "prompt_text_file": "story.txt"})
    proc = snakemake(workdir, "-n", "--configfile", "text.yaml")
    out = proc.stdout + proc.stderr
    inputs = [line for line in out.splitlines() if line.strip().startswith("input:")]
    assert sum(str(model_path) in line and "story.txt" in line for line in inputs) == 3


def test_config_yaml_agrees_with_the_schema_defaults():
    """The schema is the single source of defaults; config.yaml, which a user edits, shows
    them, and must not drift from it."""
    import yaml
    from workflow_copy import REPO

    from kvcache_exp.config import schema

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    defaults = schema.defaults()
    for key, value in config.items():
        if key != "models":
            assert defaults[key] == value, key


def test_packaged_schema_is_the_workflows_schema():
    from workflow_copy import REPO

    from kvcache_exp.config import schema

    workflow_schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert schema.load_schema() == workflow_schema


@pytest.mark.slow
def test_a_wheel_of_the_package_ships_the_schema(tmp_path):
    """A non-editable install validates like the workflow: the wheel holds the schema
    itself (the package's link to it is copied in), and the license."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from workflow_copy import REPO

    source = tmp_path / "source"  # built out of the repository, whose build/ stays clean
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    for name in ("src", "workflow/schemas"):
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=ignore)
    out = tmp_path / "wheel"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("kvcache_exp-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = zf.read("kvcache_exp/config/config.schema.yaml")
        assert any(name.endswith("licenses/LICENSE") for name in zf.namelist())
    assert shipped == (REPO / "workflow/schemas/config.schema.yaml").read_bytes()


SCHEMA_CASES = {
    "negative size": (
        {"experiments": [{"size_a": -5, "size_b": 10}]},
        "experiments[0] (size_a=-5, size_b=10).size_a: -5 is less than the minimum of 1",
    ),
    "non-integer size": (
        {"experiments": [{"size_a": 3.5, "size_b": 10}]},
        "experiments[0] (size_a=3.5, size_b=10).size_a: 3.5 is not of type 'integer'",
    ),
    "per-experiment trials below 1": (
        {"experiments": [{"size_a": 8, "size_b": 8, "trials": 0}]},
        "experiments[0] (size_a=8, size_b=8).trials: 0 is less than the minimum of 1",
    ),
    "a sweep's bad step": (
        {"experiments": {"sweep": {"size_a": 8, "size_b": {"start": 8, "stop": 16, "step": 0}}}},
        "experiments.sweep.size_b.step: 0 is less than the minimum of 1",
    ),
    "trials below 1": ({"trials": 0}, "trials: 0 is less than the minimum of 1"),
    "a server setting": (
        {"server": {"cache_reuse": "big"}},
        "server.cache_reuse: 'big' is not of type 'integer'",
    ),
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_schema_problems_name_the_key_and_the_experiment(case):
    """The messages the workflow prints for an invalid config.yaml (test_errors.py checks
    them through Snakemake), from the schema check itself: the key, the experiment with
    its sizes, and what is wrong."""
    from kvcache_exp.config import schema

    values, message = SCHEMA_CASES[case]
    assert schema.problems(values) == [message]
    assert schema.problems({"experiments": [{"size_a": 8, "size_b": 4}], "trials": 3}) == []


def test_an_unknown_key_gets_a_suggestion_and_the_known_keys():
    from kvcache_exp.config import schema

    (problem,) = schema.problems({"trails": 5})
    known = ", ".join(schema.load_schema()["properties"])
    assert problem == f"config: unknown key 'trails'; did you mean 'trials'? (known: {known})"
    (far,) = schema.problems({"server": {"zzz": 1}})
    assert far.startswith("server: unknown key 'zzz' (known: base_url, ")


def test_a_prompt_longer_than_n_ctx_or_the_models_context_is_rejected():
    config = {"experiments": [{"size_a": 1500, "size_b": 500}], "cures": False}
    assert check_experiments(config) == [
        "experiments[0] (size_a=1500, size_b=500): the hit prompt (A+B+Q = 1500+500+16) plus "
        "max_tokens=50 needs 2066 tokens, more than n_ctx=2048"
    ]
    wide = {**config, "n_ctx": 4096}
    assert check_experiments(wide, model_context=2048, model_name="tiny") == [
        "experiments[0] (size_a=1500, size_b=500): needs 2066 tokens of context, more than "
        "tiny was trained for (2048 tokens, from its GGUF metadata)"
    ]
    assert check_experiments(wide, model_context=2066) == []
