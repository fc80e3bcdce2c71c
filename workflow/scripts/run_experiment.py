"""Snakemake adapter: run one experiment configuration and write its CSVs and provenance."""

from pathlib import Path

from adapter import run_rule

from kvcache_exp.config.settings import ExperimentSettings
from kvcache_exp.measure.experiment import run_experiment

settings = dict(snakemake.params.settings)
if settings["n_threads"] is None:
    settings["n_threads"] = snakemake.threads
run_rule(
    snakemake,
    lambda: run_experiment(
        Path(snakemake.input.get("model", snakemake.params.model_file)),
        ExperimentSettings(**settings),
        Path(snakemake.output.results),
        Path(snakemake.output.prompts),
        Path(snakemake.output.record),
        Path(snakemake.output.cures),
    ),
)
