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


def _phase_seconds(log: Path, phase: str) -> float:
    """Seconds between the '<phase> started' and '<phase> finished' lines of a job log."""
    stamps = {}
    for line in log.read_text().splitlines():
        for edge in ("started", "finished"):
            if line.endswith(f": {phase} {edge}"):
                stamps[edge] = pd.Timestamp(line[:23].replace(",", "."))
    if len(stamps) != 2:
        return 0.0
    return (stamps["finished"] - stamps["started"]).total_seconds()


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
        cures_s = _phase_seconds(work / f"logs/experiment/{label}.log", "cures")
        seed_s = seconds - cures_s
        sleeps = n_trials * 2 * config["settle_ms"] / 1000.0
        rows.append(
            {
                "config": label,
                "job_s": seconds,
                "seed_s": seed_s,
                "trials": n_trials,
                "s_per_trial": seed_s / n_trials,
                "sleep_share_pct": 100 * sleeps / seed_s,
                "cures_s": cures_s,
                "cures_over_seed": cures_s / seed_s,
            }
        )
    table = pd.DataFrame(rows)
    print(
        f"\nDefault experiment: wall time {wall:.1f} s for the whole workflow "
        f"({len(table)} configurations)"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    total_job, seed, cures = (table[c].sum() for c in ("job_s", "seed_s", "cures_s"))
    print(
        f"All experiments: {total_job:.1f} s in experiment jobs: the seed's hit and miss "
        f"{seed:.1f} s ({seed / table['trials'].sum():.2f} s per trial, "
        f"{100 * config['settle_ms'] / 1000 * 2 * table['trials'].sum() / seed:.1f}% in the "
        f"designed sleeps), the cures {cures:.1f} s ({cures / seed:.2f} x the seed's part); "
        f"the experiment jobs take {total_job / seed:.2f} x the seed's protocol alone"
    )
    print(
        f"The whole workflow (the conversation replay, summaries, figures and report "
        f"included): {wall:.1f} s, {wall / seed:.2f} x the seed's protocol alone"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
