"""Snakemake adapter: the degradation table, statistics and verdicts from the CSVs."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from kvcache_exp.logs import log_to  # noqa: E402
from kvcache_exp.summary import write_summary  # noqa: E402

log_to(snakemake.log[0])
try:
    write_summary(
        [Path(p) for p in snakemake.input.results],
        Path(snakemake.output.csv),
        Path(snakemake.output.md),
        snakemake.params.model_name,
    )
except Exception:
    logging.getLogger("summarize").exception("summarizing failed")
    raise
