"""Snakemake adapter: record the model, software, hardware and configuration of the run."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from kvcache_exp import metadata  # noqa: E402
from kvcache_exp.logs import log_to  # noqa: E402

log_to(snakemake.log[0])
try:
    config = dict(snakemake.params.config)
    n_threads = config.get("n_threads") or snakemake.threads
    data = metadata.collect(
        Path(snakemake.input.model), snakemake.params.model_name, config, n_threads
    )
    metadata.write(Path(snakemake.output.json), data)
except Exception:
    logging.getLogger("run_metadata").exception("collecting the run metadata failed")
    raise
