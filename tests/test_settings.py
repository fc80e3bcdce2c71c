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
    # the caller's thread count fills in only where the configuration leaves it unset
    assert merge({**config, "n_threads": 3}, {"size_a": 8, "size_b": 4}, n_threads=2).n_threads == 3


def test_settings_rebuilt_from_their_record_are_the_same():
    """Snakemake hands a job its settings as a plain record (``params``): the server's
    settings arrive as a mapping and must become ServerSettings again."""
    from kvcache_exp.config.settings import ExperimentSettings, ServerSettings

    config = {"engine": "llama_server", "server": {"cache_reuse": 64, "api": "llama_server"}}
    settings = merge(config, {"size_a": 8, "size_b": 4}, n_threads=2)
    again = ExperimentSettings(**settings.as_dict())
    assert isinstance(again.server, ServerSettings)
    assert again == settings and again.server.cache_reuse == 64


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


ENGINE_CASES = {
    "the default engine": ({}, []),
    "llama_server with its defaults": ({"engine": "llama_server"}, []),
    "openai_http without a URL, nor a cache clearing": (
        {"engine": "openai_http", "server": {"cache_clear": "none"}},
        [
            "server.base_url: engine openai_http needs the running server's URL, e.g. "
            "http://127.0.0.1:8080 (or use engine: llama_server to have the job start one)",
            "server.cache_clear: none sends no clearing request, so nothing proves a trial "
            "starts with a cold cache and no trial can be cache-verified; set "
            "require_cache_verified: false to measure anyway (rows are written unverified)",
        ],
    ),
    "openai_http without a cache clearing, unverified on purpose": (
        {
            "engine": "openai_http",
            "server": {"base_url": "http://h:1", "cache_clear": "none"},
            "require_cache_verified": False,
        },
        [],
    ),
    "llama_server given a URL and the OpenAI API": (
        {"engine": "llama_server", "server": {"base_url": "http://h:1", "api": "openai"}},
        [
            "server.base_url: engine llama_server starts its own llama-server on a free "
            "loopback port; set base_url: null, or engine: openai_http to use the server at "
            "http://h:1",
            "server.api: engine llama_server talks to the llama-server it starts through its "
            "native API; set api: llama_server (api: openai is for engine openai_http)",
        ],
    ),
    "a URL for the in-process engine is not used, and not an error": (
        {"server": {"base_url": "http://h:1", "api": "openai"}},
        [],
    ),
}


@pytest.mark.parametrize("case", list(ENGINE_CASES))
def test_engine_and_server_settings_that_cannot_work_together(case):
    from kvcache_exp.config.settings import check_engine

    config, expected = ENGINE_CASES[case]
    assert check_engine(config) == expected
    assert check_experiments({**config, "experiments": [{"size_a": 8, "size_b": 32}]}) == expected


def test_a_cache_reuse_chunk_longer_than_b_is_rejected_for_the_server_cures():
    config = {"engine": "llama_server", "server": {"cache_reuse": 11}}
    assert check_experiments({**config, "experiments": [{"size_a": 20, "size_b": 10}]}) == [
        "experiments[0] (size_a=20, size_b=10): server.cache_reuse=11 is more than B=10: "
        "llama-server reuses only cached chunks of at least that many tokens, so the "
        "server_cache_reuse cure could not keep B; lower server.cache_reuse"
    ]
    for fine in ({"size_a": 20, "size_b": 11}, {"size_a": 20, "size_b": 10, "cures": False}):
        assert check_experiments({**config, "experiments": [fine]}) == []


def test_every_prompt_and_what_is_generated_after_it_needs_context():
    """With a kept prefix S and the cures at two kept prefixes, each prompt's need in
    tokens and in words; the largest one names the problem when n_ctx is too small."""
    config = {
        "cures": True,
        "keep_tokens": 4,
        "cure_keep_tokens": [0, 8],
        "warmup_tokens": 20,
        "quality_tokens": 40,
        "max_tokens": 5,
    }
    settings = merge(config, {"size_a": 20, "size_b": 10}, n_threads=1)
    assert settings.context_needs() == [
        (55, "the hit prompt (S+A+B+Q = 4+20+10+16) plus max_tokens=5"),
        (50, "the cures' hit at S=0 (S+A+B+Q = 0+20+10+16, or warm-up tokens 20 after S+A+B)"),
        (66, "the cures' exact answer at S=0 (S+B+Q = 0+10+16) plus quality_tokens=40"),
        (58, "the cures' hit at S=8 (S+A+B+Q = 8+20+10+16, or warm-up tokens 20 after S+A+B)"),
        (74, "the cures' exact answer at S=8 (S+B+Q = 8+10+16) plus quality_tokens=40"),
    ]
    assert settings.longest_context == 74
    experiments = {"experiments": [{"size_a": 20, "size_b": 10}]}
    assert check_experiments({**config, **experiments, "n_ctx": 73}) == [
        "experiments[0] (size_a=20, size_b=10): the cures' exact answer at S=8 (S+B+Q = "
        "8+10+16) plus quality_tokens=40 needs 74 tokens, more than n_ctx=73"
    ]
    assert check_experiments({**config, **experiments, "n_ctx": 74}) == []
    plain = merge({**config, "cures": False, "keep_tokens": 0}, {"size_a": 20, "size_b": 10}, 1)
    assert plain.context_needs() == [(51, "the hit prompt (A+B+Q = 20+10+16) plus max_tokens=5")]


def test_sizes_must_be_integers_not_booleans_or_text():
    assert check_experiments({"experiments": [{"size_a": True, "size_b": "8"}]}) == [
        "experiments[0] (size_a=True, size_b=8): size_a must be an integer >= 1, got True",
        "experiments[0] (size_a=True, size_b=8): size_b must be an integer >= 1, got '8'",
    ]


def test_a_range_sweep_includes_its_stop_and_a_sweep_needs_its_axes():
    exps = expand_experiments(
        {"experiments": {"sweep": {"size_a": 8, "size_b": {"start": 8, "stop": 10, "step": 1}}}}
    )
    assert [e["size_b"] for e in exps] == [8, 9, 10]
    assert check_experiments({"experiments": {"sweep": {"size_b": 8}}}) == [
        "experiments.sweep: give size_a and size_b, or total and one of them"
    ]


def test_the_settings_as_a_record_and_a_log_line():
    from kvcache_exp.config.settings import describe

    settings = merge({"trials": 3}, {"size_a": 8, "size_b": 4}, n_threads=2)
    record = settings.as_dict()
    assert (record["size_a"], record["size_b"], record["trials"]) == (8, 4, 3)
    assert record["server"]["api"] == "llama_server"
    line = describe(settings)
    assert line.startswith("size_a=8, size_b=4, trials=3, ")
    assert line.count("=") == len(record)


def test_schema_details_unknown_keys_nested_sweeps_and_other_schemas():
    """The schema check's own rules: problems in the order of their keys; after an
    unknown key the other problems still follow; a sweep's problems come from the branch
    the user meant (a mapping), not from the list branch; an item of the wrong type is
    named by its index; and any schema can be given."""
    from kvcache_exp.config import schema

    unknown, trials = schema.problems({"trails": 5, "trials": 0})
    assert unknown.startswith("config: unknown key 'trails'; did you mean 'trials'?")
    assert trials == "trials: 0 is less than the minimum of 1"
    assert schema.problems({"warmup_tokens": 0, "trials": 0, "max_tokens": 0}) == [
        "max_tokens: 0 is less than the minimum of 1",
        "trials: 0 is less than the minimum of 1",
        "warmup_tokens: 0 is less than the minimum of 1",
    ]
    sweep = {"sweep": {"size_a": "x", "size_b": 8}, "extra": 1}
    assert schema.problems({"experiments": sweep}) == [
        "experiments: unknown key 'extra' (known: sweep)",
        "experiments.sweep.size_a: 'x' is not valid under any of the given schemas",
    ]
    assert schema.problems({"experiments": [5]}) == ["experiments[0]: 5 is not of type 'object'"]
    other = {"type": "object", "properties": {"x": {"type": "integer"}}}
    assert schema.problems({"x": "a"}, other) == ["x: 'a' is not of type 'integer'"]
    closed = {"type": "object", "additionalProperties": False}
    assert schema.problems({"a": 1}, closed) == ["config: unknown key 'a' (known: )"]


def test_the_schema_names_what_an_experiment_may_override_and_describes_each_key():
    from kvcache_exp.config import schema

    assert schema.overridable_keys() == (
        "trials",
        "query_tokens",
        "max_tokens",
        "warmup_tokens",
        "settle_ms",
        "seed",
        "keep_tokens",
        "cures",
    )
    assert schema.describe_key("trials") == (
        "Trials per condition (hit and miss); each trial warms the cache anew."
    )
    for key in schema.load_schema()["properties"]:
        text = schema.describe_key(key)
        assert text and "\n" not in text and "  " not in text, key


def test_the_experiments_list_empty_duplicated_or_with_bad_sizes():
    """An empty list, a pair given twice (both would write the same files) and bad sizes
    are each named, and the checks go on to the next experiment after each."""
    assert check_experiments({"experiments": []}) == [
        "experiments: the list is empty; give at least one {size_a, size_b}"
    ]
    experiments = [
        {"size_a": 8, "size_b": 4},
        {"size_a": 0, "size_b": 4},
        {"size_a": 8, "size_b": 4},
        {"size_a": 8, "size_b": 4},
        {"size_a": 1500, "size_b": 500},
        {"size_a": 1, "size_b": 1},
        {"size_b": 2},
    ]
    assert check_experiments({"experiments": experiments, "cures": False}) == [
        "experiments[1] (size_a=0, size_b=4): size_a must be an integer >= 1, got 0",
        "experiments[2] (size_a=8, size_b=4): duplicate of experiments[0]; each (size_a, "
        "size_b) may appear once, since both write the same CSV files",
        "experiments[3] (size_a=8, size_b=4): duplicate of experiments[0]; each (size_a, "
        "size_b) may appear once, since both write the same CSV files",
        "experiments[4] (size_a=1500, size_b=500): the hit prompt (A+B+Q = 1500+500+16) plus "
        "max_tokens=50 needs 2066 tokens, more than n_ctx=2048",
        "experiments[6] (size_a=None, size_b=2): size_a must be an integer >= 1, got None",
    ]


def test_the_cache_reuse_check_is_for_llama_servers_cures_only():
    small_b = {"experiments": [{"size_a": 20, "size_b": 10}], "server": {"cache_reuse": 11}}
    assert check_experiments(small_b) == []  # the in-process engine: no server reuse
    openai = {"engine": "openai_http", "server": {"base_url": "http://h:1", "api": "openai"}}
    assert (
        check_experiments({**small_b, **openai, "server": {**openai["server"], "cache_reuse": 11}})
        == []
    )
    equal = {"engine": "llama_server", "server": {"cache_reuse": 10}}
    assert check_experiments({**small_b, **equal}) == []


def test_the_models_trained_context_is_named_even_without_a_name():
    config = {"experiments": [{"size_a": 40, "size_b": 20}], "cures": False}
    assert check_experiments(config, model_context=64) == [
        "experiments[0] (size_a=40, size_b=20): needs 126 tokens of context, more than the "
        "model was trained for (64 tokens, from its GGUF metadata)"
    ]
