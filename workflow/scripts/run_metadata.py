"""Snakemake adapter: gather the experiments' provenance into results/run_metadata.json."""

from adapter import run_rule

from kvcache_exp.provenance import write_run_metadata

run_rule(
    snakemake,
    lambda: write_run_metadata(
        list(snakemake.input.records),
        snakemake.output.json,
        snakemake.params.model_name,
        dict(snakemake.params.config),
    ),
)
