"""Run the real workflow in a temporary copy of the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PARTS = ("Snakefile", "config.yaml", ".test", "workflow", "profiles", "envs", "src")


def copy_workflow(dest: Path) -> Path:
    """Copy what the workflow needs (not results, models or environments) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / part)
    return dest


def small_config() -> dict:
    """The small configuration of ``.test/config.yaml``, which the workflow tests use."""
    return yaml.safe_load((REPO / ".test" / "config.yaml").read_text())


def write_config(workdir: Path, name: str, values: dict) -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run snakemake from this interpreter's environment in ``workdir``."""
    cmd = [sys.executable, "-m", "snakemake", *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run the plain command line (``python -m kvcache_exp``) in ``cwd``."""
    cmd = [sys.executable, "-m", "kvcache_exp", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake (dry-)run, as {rule: count}."""
    counts: dict[str, int] = {}
    lines = output.splitlines()
    if "Job stats:" not in lines:
        return counts
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts
