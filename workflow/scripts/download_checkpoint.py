"""Snakemake adapter: download a Hugging Face checkpoint at its pinned revision, verified."""

from pathlib import Path

from adapter import run_rule

from kvcache_exp.models.gpt2 import fetch_hf_checkpoint

source = snakemake.params.source
run_rule(
    snakemake,
    lambda: fetch_hf_checkpoint(
        snakemake.params.hf_base_url,
        source["repo"],
        source["revision"],
        source["files"],
        Path(snakemake.output.checkpoint),
    ),
)
