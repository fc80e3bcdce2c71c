"""Snakemake adapter: the seed's figure and TTFT against tokens recomputed."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from kvcache_exp.logs import log_to  # noqa: E402
from kvcache_exp.plotting import (  # noqa: E402
    plot_all_configs,
    plot_throughput,
    plot_ttft_vs_tokens,
)
from kvcache_exp.summary import load_results  # noqa: E402

log_to(snakemake.log[0])
try:
    df = load_results([Path(p) for p in snakemake.input.results])
    plot_all_configs(df, Path(snakemake.output.main), snakemake.params.model_name)
    plot_ttft_vs_tokens(df, Path(snakemake.output.tokens), snakemake.params.model_name)
    plot_throughput(df, Path(snakemake.output.throughput), snakemake.params.model_name)
except Exception:
    logging.getLogger("plot").exception("plotting failed")
    raise
