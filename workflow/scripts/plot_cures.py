"""Snakemake adapter: each cure's time against its quality, per configuration."""

from adapter import run_rule

from kvcache_exp.report.cures_plot import plot_cures_csvs

run_rule(
    snakemake,
    lambda: plot_cures_csvs(
        list(snakemake.input.cures), snakemake.output.png, snakemake.params.model_name
    ),
)
