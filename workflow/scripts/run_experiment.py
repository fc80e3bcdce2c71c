"""Snakemake adapter: run one experiment configuration and write its two CSVs."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from kvcache_exp.experiment import run_experiment  # noqa: E402
from kvcache_exp.logs import log_to  # noqa: E402
from kvcache_exp.settings import ExperimentSettings  # noqa: E402

log_to(snakemake.log[0])
settings = dict(snakemake.params.settings)
if settings["n_threads"] is None:
    settings["n_threads"] = snakemake.threads
try:
    run_experiment(
        Path(snakemake.input.model),
        ExperimentSettings(**settings),
        Path(snakemake.output.results),
        Path(snakemake.output.prompts),
    )
except Exception:
    logging.getLogger("run_experiment").exception("the experiment failed")
    raise
