"""Snakemake adapter: convert a downloaded GPT-2 checkpoint to GGUF."""

from pathlib import Path

from adapter import run_rule

from kvcache_exp.models.catalog import finish_converted
from kvcache_exp.models.gpt2 import convert_gpt2_to_gguf


def main() -> None:
    out = Path(snakemake.output.model)
    convert_gpt2_to_gguf(
        Path(snakemake.input.checkpoint),
        out,
        snakemake.params.source.get("dtype", "f32"),
        name=snakemake.params.source["repo"],
    )
    finish_converted(out, snakemake.params.sha256)


run_rule(snakemake, main)
