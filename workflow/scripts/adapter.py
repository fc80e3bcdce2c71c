"""The one way from a Snakemake script into the package.

Every script under ``workflow/scripts/`` is a thin adapter: it imports this module first
(which makes ``src/`` importable, also in an environment where the package is not
installed, such as one of ``envs/*.yaml``), then calls one function of the package
through :func:`run_rule`, which sends the log to the job's log file and records any
failure there before Snakemake reports it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# First on the path: the workflow's own package wins over any installed copy (an
# editable install of another checkout, say), so the code that ran is the code beside
# this workflow.
SRC = str(Path(__file__).resolve().parents[2] / "src")
sys.path[:] = [SRC, *(p for p in sys.path if p != SRC)]

from kvcache_exp.logs import log_to  # noqa: E402


def run_rule(snakemake: Any, main: Callable[[], object]) -> None:
    """Run ``main`` for the job ``snakemake`` describes, logging to its log file."""
    log_to(snakemake.log[0] if snakemake.log else None)
    try:
        main()
    except Exception:
        logging.getLogger(snakemake.rule).exception("rule %s failed", snakemake.rule)
        raise
