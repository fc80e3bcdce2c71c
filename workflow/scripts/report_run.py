"""Snakemake adapter: the run's model, software, hardware and configuration as a page."""

from pathlib import Path

from adapter import run_rule

from kvcache_exp.report.pages import run_page

run_rule(snakemake, lambda: run_page(Path(snakemake.input.json), Path(snakemake.output.html)))
