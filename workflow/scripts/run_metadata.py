"""Snakemake adapter: gather the experiments' provenance into results/run_metadata.json."""

from pathlib import Path

from adapter import run_rule

from kvcache_exp import provenance


def main() -> None:
    records = {Path(p).stem: provenance.read_json(p) for p in snakemake.input.records}
    data = provenance.gather(records, snakemake.params.model_name, dict(snakemake.params.config))
    provenance.write_json(Path(snakemake.output.json), data)


run_rule(snakemake, main)
