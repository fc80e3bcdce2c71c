"""Snakemake adapter: the protocol, with the run's own settings, as the report's Method page."""

from pathlib import Path

from adapter import run_rule

from kvcache_exp.report.protocol import protocol_page

run_rule(
    snakemake,
    lambda: protocol_page(
        dict(snakemake.params.settings),
        [dict(c) for c in snakemake.params.configurations],
        Path(snakemake.output.html),
    ),
)
