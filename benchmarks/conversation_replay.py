"""Benchmark: the default conversation replay, through Snakemake, and its own work per turn.

Runs only the conversation jobs of the repository's config.yaml (every policy and cache
behaviour, their summary and figures) in a temporary copy, and prints:

* the wall time those jobs add to the default run (``make run``), and each job's;
* per policy and cache behaviour, per turn: the replay's own work outside the timed
  call (rendering the chat template, tokenizing, comparing prompts and cache: the
  policy, the tripwire and the shift's span) beside the TTFT the timed call measured.

The outputs are kept in --keep (default benchmarks/out/conversations) for the docs'
figures.

    .venv/bin/python benchmarks/conversation_replay.py [--keep DIR] [--cores N]
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
    parser.add_argument("--keep", type=Path, default=REPO / "benchmarks/out/conversations")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()

    work = args.keep.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for part in PARTS:
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / part)
    sys.path.insert(0, str(REPO / "src"))
    from kvcache_exp.models.catalog import ensure_model
    from kvcache_exp.paths import DEFAULT

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    entry = config["models"][config["model"]]
    model = ensure_model(entry, REPO / "models" / entry["file"])
    (work / "benchmark.yaml").write_text(yaml.safe_dump({"model": str(model)}))
    targets = [*DEFAULT.conversation_summaries(), *DEFAULT.conversation_plots]
    command = [
        sys.executable, "-m", "snakemake", *targets, "--cores", str(args.cores),
        "--resources", "gpu=1", "--configfile", "benchmark.yaml",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, cwd=work, check=True, capture_output=True)
    wall = time.perf_counter() - start

    jobs = {
        p.name.removeprefix("conversations_builtin_").removesuffix(".tsv"): float(
            pd.read_csv(p, sep="\t")["s"].iloc[0]
        )
        for p in sorted((work / "logs/benchmark").glob("conversations_*.tsv"))
    }
    turns = pd.concat(
        [pd.read_csv(p) for p in sorted((work / DEFAULT.conversations).glob("*/*.csv"))],
        ignore_index=True,
    )
    turns["replay_ms"] = turns[["render_ms", "tokenize_ms", "compare_ms"]].sum(axis=1)
    table = turns.groupby(["policy", "cache"], sort=False).agg(
        turns=("turn", "size"),
        ttft_ms=("ttft_ms", "median"),
        render_ms=("render_ms", "median"),
        tokenize_ms=("tokenize_ms", "median"),
        compare_ms=("compare_ms", "median"),
        replay_ms=("replay_ms", "median"),
        replay_max_ms=("replay_ms", "max"),
    )
    table["replay_share_of_ttft"] = table["replay_ms"] / table["ttft_ms"]
    print(f"conversation jobs of config.yaml, {args.cores} cores: {wall:.0f} s wall in all")
    for name, seconds in jobs.items():
        print(f"  {name}: {seconds:.1f} s")
    print("\nper turn, medians (ms):")
    print(table.to_string(float_format=lambda v: f"{v:.3g}"))
    print(f"\noutputs kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
