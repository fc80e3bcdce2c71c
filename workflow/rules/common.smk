import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from kvcache_exp import models as kv_models  # noqa: E402
from kvcache_exp import settings as kv_settings  # noqa: E402


validate(config, schema="../schemas/config.schema.yaml")


def _fail(problems):
    """Stop before any job runs, listing every problem found in the configuration."""
    raise WorkflowError(
        "Invalid configuration (config.yaml or --config):\n"
        + "\n".join(f"  - {p}" for p in problems)
    )


def model_entry():
    """The catalog entry of the configured model, or None when `model` is a path."""
    return config["models"].get(config["model"])


def model_path():
    """Where the model file is: in models_dir for catalog models, else the given path."""
    entry = model_entry()
    if entry is not None:
        return str(Path(config["models_dir"]) / entry["file"])
    return config["model"]


def model_name():
    """A readable model name for titles and reports."""
    entry = model_entry()
    return config["model"] if entry is not None else Path(config["model"]).stem


def _check_model():
    """Resolve `model` and check a model file already in place; return its context length."""
    entry = model_entry()
    if entry is None:
        path = Path(config["model"])
        looks_like_path = path.suffix == ".gguf" or "/" in config["model"]
        if not looks_like_path:
            known = ", ".join(sorted(config["models"])) or "(none)"
            _fail([f"model: unknown model name {config['model']!r}; known: {known}"])
        if not path.is_file():
            _fail([f"model: the model file {path} does not exist"])
    path = Path(model_path())
    if entry is not None:
        aside = kv_models.set_aside_if_corrupt(path, entry.get("sha256"))
        if aside is not None:
            logger.warning(
                f"{path} does not match its pinned sha256: moved to {aside}; "
                "it will be fetched again"
            )
    if not path.is_file():
        return None
    try:
        return kv_models.model_context_length(path)
    except kv_models.ModelError as exc:
        _fail([f"model: {exc}"])


def _check_config():
    problems = kv_settings.check_experiments(
        config, _check_model(), model_name=model_name()
    )
    if config.get("prompt_text_file") and not Path(config["prompt_text_file"]).is_file():
        problems.append(
            f"prompt_text_file: {config['prompt_text_file']} does not exist"
        )
    if problems:
        _fail(problems)


_check_config()
EXPERIMENTS = kv_settings.expand_experiments(config)


def experiment_labels():
    """The seed's file tags, e.g. a512_b256, one per configured experiment."""
    return [kv_settings.experiment_label(e["size_a"], e["size_b"]) for e in EXPERIMENTS]


def results_csvs():
    return expand("results/results_phase3b_{label}.csv", label=experiment_labels())


def prompts_csvs():
    return expand("prompts/prompts_phase3b_{label}.csv", label=experiment_labels())


def experiment_settings(wildcards):
    """Every setting of one experiment, as the rule's params: a change reruns it alone.

    Sizes asked for on the command line but absent from the config run with the global
    settings, after the same checks.
    """
    size_a, size_b = int(wildcards.size_a), int(wildcards.size_b)
    entry = next(
        (e for e in EXPERIMENTS if (e["size_a"], e["size_b"]) == (size_a, size_b)),
        {"size_a": size_a, "size_b": size_b},
    )
    problems = kv_settings.check_experiments({**config, "experiments": [entry]})
    if problems:
        _fail(problems)
    settings = kv_settings.merge(config, entry, n_threads=1).as_dict()
    settings["n_threads"] = config.get("n_threads")
    return settings


def model_entry_params(wildcards):
    """The catalog entry whose file the get_model rule is asked to produce."""
    for entry in config["models"].values():
        if entry["file"] == wildcards.model_file:
            return entry
    raise WorkflowError(f"no model in the catalog has the file name {wildcards.model_file}")


def model_files_regex():
    """Only catalog files can be fetched; anything else in models_dir must already exist."""
    names = [re.escape(e["file"]) for e in config["models"].values()]
    return "|".join(names) if names else "(?!)"
