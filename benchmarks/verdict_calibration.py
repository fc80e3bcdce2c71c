"""Benchmark: how often each verdict comes out when the truth is known (calibration).

Simulates the seed's design (3 configurations x 10 trials per condition) and a sweep
(A = 256, B = 64..1024 in steps of 64, the sweep that config.yaml describes; 16
configurations x 10 trials) under known truths, at trial-to-trial noise of 5, 15 and 35%
coefficient of variation with occasional outliers, runs the real
:func:`kvcache_exp.analysis.verdicts.verdicts` on every simulated run, and prints in
Markdown how often each verdict came out. The goal: a wrong SUPPORTED in at most 5% of
runs in every scenario, and the right SUPPORTED in at least 80% of runs at 5% noise.

Truths, modelled on real runs of the default experiment on 2 CPU cores: hit TTFT about
100 ms and flat; miss TTFT 4.2 ms per recomputed token (B + Q) - 105 ms (1037 / 1575 /
2113 ms for the seed's configurations); decode 210 tok/s. Scenarios change one truth each:
hit TTFT rising by 50% over the B range; miss TTFT quadratic, with a bow of 30% of its
rise over the range; decode 15% faster after a miss; no miss cost (miss TTFT = hit
TTFT). Noise is multiplicative and log-normal (its median is the truth); with probability
5% a trial is an outlier, 1.5-3x slower (TTFT x U(1.5, 3), decode tok/s / U(1.5, 3)).

    .venv/bin/python benchmarks/verdict_calibration.py [--runs 400] [--jobs 2]
        [--resamples 10000] [--design "seed 3×10"] [--scenario baseline]
        [--set MISS_LINEAR_MAX_BOW=0.10]

The default resamples are the summary's own (:data:`kvcache_exp.analysis.stats.RESAMPLES`).
``--runs 50 --jobs 1`` took 3.5 minutes on 2 shared cores, so the defaults take about half
an hour; ``--resamples 4000`` more than halves that and gives the same table up to a few
runs per cell.

``--set`` overrides a threshold of :mod:`kvcache_exp.analysis.verdicts`, or the outlier
rule's :data:`kvcache_exp.analysis.trials.SLOW_OUTLIER_K`, for the run, to see what
another rule would give; the printed table names every override.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from kvcache_exp.analysis import stats, trials  # noqa: E402
from kvcache_exp.analysis import verdicts as vd  # noqa: E402

SEED_CONFIGS = ((512, 256), (384, 384), (256, 512))
SWEEP_CONFIGS = tuple((256, b) for b in range(64, 1025, 64))
DESIGNS = {"seed 3×10": SEED_CONFIGS, "sweep 16×10": SWEEP_CONFIGS}
NOISE_CVS = (0.05, 0.15, 0.35)
TRIALS, SIZE_Q = 10, 16
OUTLIER_RATE, OUTLIER_FACTOR = 0.05, (1.5, 3.0)
HIT_MS, MISS_MS_PER_TOKEN, MISS_INTERCEPT_MS = 100.0, 4.2, -105.0
DECODE_TOK_S = 210.0
BASE_SEED = 20_251_127

S, N, U = vd.SUPPORTED, vd.NOT_SUPPORTED, vd.UNDETERMINED


@dataclass(frozen=True)
class Truth:
    """One simulated world: hit and miss TTFT per configuration, and the decode ratio."""

    hit_rise: float = 0.0  # hit TTFT change over the B range, as a share of its start
    miss_bow: float | None = None  # None: linear; else the bow as a share of the rise
    decode_ratio: float = 1.0
    miss_equals_hit: bool = False


#: scenario -> (truth, [(verdict key, what the truth says of the claim)])
SCENARIOS: dict[str, tuple[Truth, list[tuple[str, bool]]]] = {
    "baseline": (
        Truth(),
        [
            ("miss_costlier", True),
            ("hit_constant", True),
            ("miss_linear", True),
            ("decode_unaffected", True),
        ],
    ),
    "hit rising 50%": (Truth(hit_rise=0.5), [("hit_constant", False)]),
    "miss quadratic (bow 30%)": (Truth(miss_bow=0.30), [("miss_linear", False)]),
    "decode ratio 1.15": (Truth(decode_ratio=1.15), [("decode_unaffected", False)]),
    "no miss cost": (Truth(miss_equals_hit=True), [("miss_costlier", False)]),
}

TRUTH_LABELS = {
    ("miss_costlier", True): "miss ≈ 10-20× hit",
    ("miss_costlier", False): "miss = hit",
    ("hit_constant", True): "hit flat",
    ("hit_constant", False): "hit rising 50%",
    ("miss_linear", True): "miss linear",
    ("miss_linear", False): "miss quadratic, bow 30%",
    ("decode_unaffected", True): "decode ratio 1.00",
    ("decode_unaffected", False): "decode ratio 1.15",
}


def _ttft_truth(truth: Truth, configs) -> tuple[np.ndarray, np.ndarray]:
    """True (median) hit and miss TTFT per configuration."""
    b = np.array([cb for _, cb in configs], dtype=float)
    t = (b - b.min()) / (b.max() - b.min())
    hit = HIT_MS * (1 + truth.hit_rise * t)
    x = b + SIZE_Q
    miss = MISS_MS_PER_TOKEN * x + MISS_INTERCEPT_MS
    if truth.miss_bow is not None:
        # y(0) + rise * ((1 - w) t + w t²): the bow over t in [0, 1] is w / 4 of the rise.
        w = 4 * truth.miss_bow
        rise = miss.max() - miss.min()
        miss = miss.min() + rise * ((1 - w) * t + w * t * t)
    if truth.miss_equals_hit:
        miss = hit.copy()
    return hit, miss


def simulate(truth: Truth, configs, cv: float, rng: np.random.Generator) -> pd.DataFrame:
    """One run of the design: the columns the verdicts read, hit then miss per config."""
    hit, miss = _ttft_truth(truth, configs)
    sigma = math.sqrt(math.log1p(cv * cv))
    k, n = len(configs), TRIALS
    centers = np.concatenate([np.repeat(hit, n), np.repeat(miss, n)])
    decode = np.concatenate(
        [np.full(k * n, DECODE_TOK_S), np.full(k * n, DECODE_TOK_S * truth.decode_ratio)]
    )
    rows = 2 * k * n
    slow = np.where(rng.random(rows) < OUTLIER_RATE, rng.uniform(*OUTLIER_FACTOR, rows), 1.0)
    ttft = centers * np.exp(sigma * rng.standard_normal(rows)) * slow
    slow_d = np.where(rng.random(rows) < OUTLIER_RATE, rng.uniform(*OUTLIER_FACTOR, rows), 1.0)
    decode = decode * np.exp(sigma * rng.standard_normal(rows)) / slow_d
    a = np.array([ca for ca, _ in configs] * 2).repeat(n)
    b = np.array([cb for _, cb in configs] * 2).repeat(n)
    condition = np.repeat(["hit", "miss"], k * n)
    return pd.DataFrame(
        {
            "trial": np.tile(np.arange(1, n + 1), 2 * k),
            "condition": condition,
            "ttft_ms": ttft,
            "size_a": a,
            "size_b": b,
            "size_q": SIZE_Q,
            "tokens_recomputed": np.where(condition == "hit", SIZE_Q, b + SIZE_Q),
            "decode_tok_s": decode,
            "cache_verified": True,
        }
    )


def _cluster_robust_slope(df: pd.DataFrame) -> tuple[float, float]:
    """95% CI of the hit slope from OLS over every trial, errors clustered by config."""
    import statsmodels.api as sm

    hit = df[df["condition"] == "hit"]
    groups = pd.factorize(hit["size_b"])[0]
    res = sm.OLS(hit["ttft_ms"].to_numpy(), sm.add_constant(hit["size_b"].to_numpy(float))).fit(
        cov_type="cluster", cov_kwds={"groups": groups}, use_t=True
    )
    low, high = res.conf_int(0.05)[1]
    return float(low), float(high)


def _owner(name: str):
    """The module whose setting ``name`` is: a verdict's threshold, or the outlier rule."""
    return next((m for m in (vd, trials) if hasattr(m, name) and name.isupper()), None)


def run_cell(task: tuple) -> dict:
    """Every run of one (design, scenario, noise) cell: verdict counts and coverage."""
    design, scenario, cv, runs, resamples, overrides, cell_seed = task
    for name, value in overrides.items():
        setattr(_owner(name), name, value)
    truth, _ = SCENARIOS[scenario]
    configs = DESIGNS[design]
    rng = np.random.default_rng(cell_seed)
    counts: dict[str, Counter] = {
        key: Counter()
        for key in (
            "miss_costlier",
            "hit_constant",
            "miss_linear",
            "decode_unaffected",
            "miss_costlier_per_config",
        )
    }
    cover = Counter()
    for _ in range(runs):
        df = simulate(truth, configs, cv, rng)
        found = {v.key: v for v in vd.verdicts(df, n_resamples=resamples)}
        for key, verdict in found.items():
            counts[key][verdict.status] += 1
        main = found["miss_costlier"].evidence
        n_sup, n_not = int(main["n_supported"]), int(main["n_not_supported"])
        per = counts["miss_costlier_per_config"]
        per[S] += n_sup
        per[N] += n_not
        per[U] += int(main["n_configs"]) - n_sup - n_not
        if scenario == "baseline":
            hit_ev = found["hit_constant"].evidence
            cover["boot"] += hit_ev["slope_ci_low"] <= 0 <= hit_ev["slope_ci_high"]
            hit = df[df["condition"] == "hit"]
            ols = stats.fit_line(hit["size_b"], hit["ttft_ms"])
            cover["ols"] += ols.slope_ci_low <= 0 <= ols.slope_ci_high
            low, high = _cluster_robust_slope(df)
            cover["cluster"] += low <= 0 <= high
            bow = found["miss_linear"].evidence
            cover["bow"] += bow["bow_share_ci_low"] <= 0 <= bow["bow_share_ci_high"]
            dec = found["decode_unaffected"].evidence
            cover["decode"] += dec["ratio_ci_low"] <= 1 <= dec["ratio_ci_high"]
    return {
        "design": design,
        "scenario": scenario,
        "cv": cv,
        "runs": runs,
        "counts": counts,
        "cover": cover,
    }


def _share(counter: Counter, status: str) -> float:
    total = sum(counter.values())
    return counter[status] / total if total else math.nan


def _cell(counter: Counter) -> str:
    return " / ".join(f"{_share(counter, s) * 100:.0f}" for s in (S, N, U))


def print_tables(
    results: list[dict], runs: int, resamples: int, seconds: float, overrides: dict, jobs: int
) -> None:
    """The verdict table and the interval-coverage table, in Markdown."""
    by = {(r["design"], r["scenario"], r["cv"]): r for r in results}
    designs = [d for d in DESIGNS if any(r["design"] == d for r in results)]
    cols = [(d, cv) for d in designs for cv in NOISE_CVS]
    header = ["Claim (verdict)", "Truth"] + [f"{d}, CV {cv:.0%}" for d, cv in cols] + ["Goal"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    met_all = True
    for scenario, (_, claims) in SCENARIOS.items():
        if (designs[0], scenario, NOISE_CVS[0]) not in by:
            continue
        for key, true in claims:
            keys = [key] + (["miss_costlier_per_config"] if key == "miss_costlier" else [])
            for k in keys:
                cells, ok = [], True
                for d, cv in cols:
                    counter = by[(d, scenario, cv)]["counts"][k]
                    cells.append(_cell(counter))
                    if true and cv == NOISE_CVS[0]:
                        ok &= _share(counter, S) >= 0.80
                    if not true:
                        ok &= _share(counter, S) <= 0.05
                goal = ("right S ≥ 80% at CV 5%" if true else "wrong S ≤ 5%") + (
                    ": met" if ok else ": **missed**"
                )
                met_all &= ok
                name = f"`{k}`" if k == key else "`miss_costlier`, per configuration"
                print(
                    f"| {name} | {TRUTH_LABELS[(key, true)]} | "
                    + " | ".join(cells)
                    + f" | {goal} |"
                )
    print()
    print(
        "Each cell: % of runs SUPPORTED / NOT SUPPORTED / UNDETERMINED; "
        f"{runs} simulated runs per cell (per-configuration rows: runs × configurations). "
        f"{resamples} bootstrap resamples per interval; noise is log-normal with the "
        f"given CV plus {OUTLIER_RATE:.0%} outliers 1.5-3× slower. "
        f"All goals met: {'yes' if met_all else 'no'}."
    )
    if (designs[0], "baseline", NOISE_CVS[0]) in by:
        print()
        print("Coverage of 95% intervals in the baseline (true value inside the interval):")
        print()
        header = ["Interval"] + [f"{d}, CV {cv:.0%}" for d, cv in cols]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        rows = [
            ("boot", "hit slope = 0: configuration medians, stratified bootstrap (used)"),
            ("ols", "hit slope = 0: OLS over every trial, t interval (the old rule)"),
            ("cluster", "hit slope = 0: OLS, errors clustered by configuration (t, G-1 df)"),
            ("bow", "miss bow = 0: configuration medians, stratified bootstrap (used)"),
            ("decode", "decode ratio = 1: pooled medians, stratified bootstrap (used)"),
        ]
        for key, label in rows:
            cells = [f"{by[(d, 'baseline', cv)]['cover'][key] / runs * 100:.0f}%" for d, cv in cols]
            print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    settings = ", ".join(f"{k} = {v}" for k, v in overrides.items()) or "none"
    print(
        f"Thresholds: HIT_CONSTANT_MAX_CHANGE = {vd.HIT_CONSTANT_MAX_CHANGE}, "
        f"MISS_LINEAR_MAX_BOW = {vd.MISS_LINEAR_MAX_BOW}, DECODE_RATIO_BOUNDS = "
        f"{vd.DECODE_RATIO_BOUNDS}, CONFIDENCE = {vd.CONFIDENCE}, SLOW_OUTLIER_K = "
        f"{trials.SLOW_OUTLIER_K} (overrides: {settings}). "
        f"Run time {seconds:.0f} s with {jobs} process(es) on {os.cpu_count()} CPU(s)."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400, help="simulated runs per cell")
    parser.add_argument(
        "--resamples",
        type=int,
        default=stats.RESAMPLES,
        help="bootstrap resamples per interval (default: as verdicts() itself; fewer is "
        "faster and close)",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--design",
        action="append",
        choices=list(DESIGNS),
        help="only this design (repeatable; default: all)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="only this scenario (repeatable; default: all)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a threshold of kvcache_exp.analysis.verdicts (or trials.SLOW_OUTLIER_K)",
    )
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if _owner(name) is None:
            parser.error(f"--set: neither verdicts nor trials has {name}")
        overrides[name] = ast.literal_eval(value)
        setattr(_owner(name), name, overrides[name])
    tasks = [
        (
            design,
            scenario,
            cv,
            args.runs,
            args.resamples,
            overrides,
            [BASE_SEED, i, j, round(cv * 100)],
        )
        for i, design in enumerate(DESIGNS)
        for j, scenario in enumerate(SCENARIOS)
        for cv in NOISE_CVS
        if design in (args.design or DESIGNS) and scenario in (args.scenario or SCENARIOS)
    ]
    start = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(run_cell, tasks))
    else:
        results = [run_cell(t) for t in tasks]
    print_tables(
        results, args.runs, args.resamples, time.perf_counter() - start, overrides, args.jobs
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
