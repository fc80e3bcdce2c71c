"""Snakemake adapter: the degradation table, statistics and verdicts from the CSVs."""

from pathlib import Path

from adapter import run_rule

from kvcache_exp.report.summary import write_summary

run_rule(
    snakemake,
    lambda: write_summary(
        [Path(p) for p in snakemake.input.results],
        Path(snakemake.output.csv),
        Path(snakemake.output.md),
        snakemake.params.model_name,
        out_html=Path(snakemake.output.html),
        record_paths=[Path(p) for p in snakemake.input.records],
        allow_mixed=snakemake.params.allow_mixed_provenance,
        cure_paths=[Path(p) for p in snakemake.input.cures],
        out_cures_csv=Path(snakemake.output.cures),
    ),
)
