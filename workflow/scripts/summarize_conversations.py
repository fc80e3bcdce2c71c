"""Snakemake adapter: the replay's summary per policy and cache behaviour, and its page."""

from adapter import run_rule

from kvcache_exp.report.conversations import write_conversations_summary

run_rule(
    snakemake,
    lambda: write_conversations_summary(
        list(snakemake.input.csvs),
        snakemake.output.csv,
        snakemake.output.quality,
        snakemake.output.md,
        snakemake.output.html,
        snakemake.params.model_name,
    ),
)
