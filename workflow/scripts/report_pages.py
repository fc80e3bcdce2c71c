"""Snakemake adapter: the report's HTML pages (summary, prompts, run) from our outputs."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from kvcache_exp import report  # noqa: E402
from kvcache_exp.logs import log_to  # noqa: E402

log_to(snakemake.log[0])
out = Path(snakemake.output.html)
try:
    if snakemake.rule == "report_summary":
        report.summary_page(Path(snakemake.input.md), out)
    elif snakemake.rule == "report_prompts":
        report.prompts_page(Path(snakemake.input.csv), out, snakemake.params.label)
    else:
        report.run_page(Path(snakemake.input.json), out)
except Exception:
    logging.getLogger("report_pages").exception("writing %s failed", out)
    raise
