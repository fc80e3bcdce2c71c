"""Snakemake adapter: each cure's time against its quality, per configuration."""

from pathlib import Path

from adapter import run_rule

from kvcache_exp.analysis.load import load_cures
from kvcache_exp.report.cures_plot import plot_cures

run_rule(
    snakemake,
    lambda: plot_cures(
        load_cures([Path(p) for p in snakemake.input.cures]),
        Path(snakemake.output.png),
        snakemake.params.model_name,
    ),
)
