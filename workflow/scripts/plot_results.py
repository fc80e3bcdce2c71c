"""Snakemake adapter: the seed's figure, TTFT against tokens recomputed, and throughput."""

from adapter import run_rule

from kvcache_exp.report.plotting import plot_results

run_rule(
    snakemake,
    lambda: plot_results(
        list(snakemake.input.results),
        snakemake.output.main,
        snakemake.output.tokens,
        snakemake.output.throughput,
        snakemake.params.model_name,
    ),
)
