"""Snakemake adapter: the seed's figure, TTFT against tokens recomputed, and throughput."""

from pathlib import Path

from adapter import run_rule

from kvcache_exp.analysis.load import load_results
from kvcache_exp.report.plotting import plot_all_configs, plot_throughput, plot_ttft_vs_tokens


def main() -> None:
    df = load_results([Path(p) for p in snakemake.input.results])
    name = snakemake.params.model_name
    plot_all_configs(df, Path(snakemake.output.main), name)
    plot_ttft_vs_tokens(df, Path(snakemake.output.tokens), name)
    plot_throughput(df, Path(snakemake.output.throughput), name)


run_rule(snakemake, main)
