"""Benchmark: the harness's own overhead in the TTFT measurement.

``ttft_overhead_ms`` is the wall time of the timed 1-token call that llama.cpp did not
spend evaluating tokens: llama-cpp-python's Python code, sampling and detokenizing.
This prints its median for hit and miss, and as a share of the median TTFT.

    .venv/bin/python benchmarks/harness_overhead.py [RESULTS_DIR]

RESULTS_DIR defaults to benchmarks/out/default/results (made by run_default.py); with
no results there, it runs the seed's three configurations with 5 trials and no settle
directly through the package on the embedded model.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def _measure(out: Path) -> list[Path]:
    from kvcache_exp.experiment import run_experiment
    from kvcache_exp.models import ensure_model
    from kvcache_exp.settings import merge

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    entry = config["models"][config["model"]]
    model = ensure_model(entry, REPO / "models" / entry["file"])
    paths = []
    for exp in config["experiments"]:
        settings = merge({**config, "trials": 5, "settle_ms": 0}, exp, os.cpu_count() or 1)
        path = out / f"results_phase3b_{settings.label}.csv"
        run_experiment(model, settings, path, out / f"prompts_{settings.label}.csv")
        paths.append(path)
    return paths


def main() -> int:
    results = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "benchmarks/out/default/results"
    paths = sorted(results.glob("results_phase3b_a*_b*.csv"))
    with tempfile.TemporaryDirectory() as tmp:
        if not paths:
            print(f"no results in {results}: measuring 3 configurations x 5 trials now")
            paths = _measure(Path(tmp))
        df = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    print(
        f"\nHarness overhead inside the TTFT call ({len(paths)} configurations, {len(df)} trials)"
    )
    rows = []
    for (a, b, cond), g in df.groupby(["size_a", "size_b", "condition"], sort=False):
        ttft, over = g["ttft_ms"].median(), g["ttft_overhead_ms"].median()
        rows.append(
            {
                "config": f"{a}/{b}",
                "condition": cond,
                "median_ttft_ms": ttft,
                "median_overhead_ms": over,
                "share_pct": 100 * over / ttft,
            }
        )
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    for cond, g in df.groupby("condition"):
        ttft, over = g["ttft_ms"].median(), g["ttft_overhead_ms"].median()
        print(
            f"{cond}: median overhead {over:.2f} ms = {100 * over / ttft:.2f}% of the "
            f"median TTFT ({ttft:.1f} ms)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
