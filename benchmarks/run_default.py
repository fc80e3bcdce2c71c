"""Benchmark: the default experiment, end to end, through Snakemake.

Runs the workflow with the repository's config.yaml (the seed's three configurations,
10 trials, settle 500 ms) in a temporary copy, and prints the wall time, the time per
trial, and the share of that time spent in the seed's designed sleeps. The outputs
are kept in --keep (default benchmarks/out/default) for the README figure and for
benchmarks/harness_overhead.py.

    .venv/bin/python benchmarks/run_default.py [--keep DIR] [--configfile extra.yaml]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
PARTS = ("Snakefile", "config.yaml", "workflow", "profiles", "envs", "src")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=REPO / "benchmarks/out/default")
    parser.add_argument("--configfile", type=Path, default=None)
    args = parser.parse_args()

    work = args.keep.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for part in PARTS:
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / part)
    # The model, fetched once into the repository's models/ and given to the copy by path.
    sys.path.insert(0, str(REPO / "src"))
    from kvcache_exp.models.catalog import ensure_model

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    entry = config["models"][config["model"]]
    model = ensure_model(entry, REPO / "models" / entry["file"])
    overrides = work / "benchmark.yaml"
    overrides.write_text(yaml.safe_dump({"model": str(model)}))

    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        "all",
        "--resources",
        "gpu=1",
        "--configfile",
        str(overrides),
    ]
    if args.configfile:
        cmd.append(str(args.configfile.resolve()))
    start = time.perf_counter()
    subprocess.run(cmd, cwd=work, check=True)
    wall = time.perf_counter() - start

    if args.configfile:
        config.update(yaml.safe_load(args.configfile.read_text()))
    rows = []
    for bench in sorted((work / "logs/benchmark").glob("experiment_*.tsv")):
        label = bench.stem.removeprefix("experiment_")
        seconds = float(pd.read_csv(bench, sep="\t")["s"].iloc[0])
        results = pd.read_csv(work / f"results/results_phase3b_{label}.csv")
        n_trials = len(results)  # one row per trial and condition
        sleeps = n_trials * 2 * config["settle_ms"] / 1000.0
        rows.append(
            {
                "config": label,
                "job_s": seconds,
                "trials": n_trials,
                "s_per_trial": seconds / n_trials,
                "sleep_s": sleeps,
                "sleep_share_pct": 100 * sleeps / seconds,
            }
        )
    table = pd.DataFrame(rows)
    print(
        f"\nDefault experiment: wall time {wall:.1f} s for the whole workflow "
        f"({len(table)} configurations)"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    total_job = table["job_s"].sum()
    print(
        f"All experiments: {total_job:.1f} s in experiment jobs, "
        f"{total_job / table['trials'].sum():.2f} s per trial, "
        f"{100 * table['sleep_s'].sum() / total_job:.1f}% in the designed sleeps"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
