import re
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from kvcache_exp import models as kv_models  # noqa: E402
from kvcache_exp import settings as kv_settings  # noqa: E402


def _fail(problems):
    """Stop before any job runs, listing every problem found in the configuration."""
    raise WorkflowError(
        "Invalid configuration (config.yaml, --configfile or --config):\n"
        + "\n".join(f"  - {p}" for p in problems)
    )


def _validate_config():
    """Short messages for schema violations first; then Snakemake's validate fills defaults."""
    schema_path = Path(workflow.current_basedir) / "../schemas/config.schema.yaml"
    with open(schema_path) as fh:
        schema = yaml.safe_load(fh)
    problems = kv_settings.schema_problems(config, schema)
    if problems:
        _fail(problems)
    validate(config, schema="../schemas/config.schema.yaml")


_validate_config()


def _resolve_model():
    try:
        return kv_models.resolve(config)
    except kv_models.ModelError as exc:
        _fail([str(exc)])


MODEL_PATH, MODEL_NAME, MODEL_ENTRY = _resolve_model()


def model_path():
    """Where the model file is: in models_dir for catalog models, else the given path."""
    return str(MODEL_PATH)


def model_name():
    """A readable model name for titles and reports."""
    return MODEL_NAME


def _check_model():
    """Check a model file already in place; return the context it was trained for.

    A catalog model that fails its checksum is moved aside so that it is fetched again.
    """
    if MODEL_ENTRY is not None:
        aside = kv_models.set_aside_if_corrupt(MODEL_PATH, MODEL_ENTRY.get("sha256"))
        if aside is not None:
            logger.warning(
                f"{MODEL_PATH} does not match its pinned sha256: moved to {aside}; "
                "it will be fetched again"
            )
    if not MODEL_PATH.is_file():
        return (MODEL_ENTRY or {}).get("context_length"), "from the model catalog"
    try:
        return kv_models.model_context_length(MODEL_PATH), "from its GGUF metadata"
    except kv_models.ModelError as exc:
        _fail([f"model: {exc}"])


def _check_config():
    context, source = _check_model()
    problems = kv_settings.check_experiments(
        config, context, model_name=model_name(), context_source=source
    )
    if (
        config.get("prompt_text_file")
        and not Path(config["prompt_text_file"]).is_file()
    ):
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


def report_pages():
    """The report's HTML pages: summary, run, and one page of prompts per configuration."""
    return [
        "results/report/summary.html",
        "results/report/run.html",
        *expand("results/report/prompts_{label}.html", label=experiment_labels()),
    ]


def experiment_inputs(wildcards):
    """The model, and the user's prompt text when there is one (editing it reruns)."""
    inputs = {"model": model_path()}
    if config.get("prompt_text_file"):
        inputs["prompt_text"] = config["prompt_text_file"]
    return inputs


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
    raise WorkflowError(
        f"no model in the catalog has the file name {wildcards.model_file}"
    )


def model_files_regex():
    """Only catalog files can be fetched; anything else in models_dir must already exist."""
    names = [re.escape(e["file"]) for e in config["models"].values()]
    return "|".join(names) if names else "(?!)"


def run_config():
    """The configuration as the run used it (defaults filled in, catalog left out)."""
    return {k: v for k, v in config.items() if k != "models"}
