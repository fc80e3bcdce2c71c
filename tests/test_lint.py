"""House style, checked like any other behaviour: ruff, snakefmt and Snakemake's linter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "cmd",
    [
        [str(BIN / "ruff"), "check", "src", "tests", "benchmarks", "workflow/scripts"],
        [str(BIN / "ruff"), "format", "--check", "src", "tests", "benchmarks", "workflow/scripts"],
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"],
        [sys.executable, "-m", "snakemake", "--lint"],
    ],
    ids=["ruff", "ruff-format", "snakefmt", "snakemake-lint"],
)
def test_clean(cmd):
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    if "--lint" in cmd:
        assert "Lints for" not in out, out
