"""Logging set-up shared by the Snakemake scripts and the command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def log_to(path: str | Path | None = None, level: int = logging.INFO) -> None:
    """Send log records to ``path`` (the job's Snakemake log) and to stderr.

    Snakemake shows a failed job's log; the stderr copy lets a user follow a long run.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="w", encoding="utf-8"))
    logging.basicConfig(level=level, format=FORMAT, handlers=handlers, force=True)
    logging.captureWarnings(True)
