"""Snakemake adapter: the replay's figures (TTFT per turn, tokens evaluated, quality)."""

from adapter import run_rule

from kvcache_exp.report.conversations import plot_conversation_csvs

run_rule(
    snakemake,
    lambda: plot_conversation_csvs(
        list(snakemake.input.csvs),
        snakemake.output.ttft,
        snakemake.output.tokens,
        snakemake.output.quality,
        snakemake.params.model_name,
    ),
)
