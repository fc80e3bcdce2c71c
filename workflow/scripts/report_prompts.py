"""Snakemake adapter: one configuration's prompts as a report page, A, B and Q marked."""

from pathlib import Path

from adapter import run_rule

from kvcache_exp.report.pages import prompts_page

run_rule(
    snakemake,
    lambda: prompts_page(
        Path(snakemake.input.csv), Path(snakemake.output.html), snakemake.params.label
    ),
)
