"""Snakemake adapter: measure one configuration and write its CSVs and provenance."""

from pathlib import Path

from adapter import run_rule

from kvcache_exp.config.settings import ExperimentSettings
from kvcache_exp.measure.experiment import run_experiment
from kvcache_exp.paths import ConfigurationFiles

settings = dict(snakemake.params.settings)
if settings["n_threads"] is None:
    settings["n_threads"] = snakemake.threads
out = snakemake.output
run_rule(
    snakemake,
    lambda: run_experiment(
        Path(snakemake.input.get("model", snakemake.params.model_file)),
        ExperimentSettings(**settings),
        ConfigurationFiles(Path(out.results), Path(out.prompts), Path(out.record), Path(out.cures)),
    ),
)
