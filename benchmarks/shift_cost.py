"""Benchmark: what the shift costs, and what it depends on.

A shift removes A's cells and moves B's back by |A| with ``llama_memory_seq_add``, which
only marks cells: llama.cpp re-rotates the keys at the next decode, and it does so for
the whole cache (all ``n_ctx`` cells, by its source: ``llama_kv_cache::update`` builds the
K-shift graph over the full cache), not only for B's. So the shift's extra time over a
hit should grow with ``n_ctx`` at fixed A and B, and the "share of the miss penalty
recovered" depends on the context size a user runs with, not only on |B|.

This prints, side by side in one run, the median TTFT of the hit, the shift and the miss
(each from a restored snapshot of the warmed ``[A, B]``, exactly as the cures time them)
at ``n_ctx`` 2048 and 8192 with A = B = 384, and the shift's extra time over the hit.
With ``--sequences`` it also compares the seed's hit and miss in the engine's context
(two sequences in one unified cache, which the head recompute needs) with a
one-sequence context, to show that the second sequence costs the seed's trials nothing.

    .venv/bin/python benchmarks/shift_cost.py [--trials N] [--threads T] [--sequences]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _median_ms(engine, protocol, snapshot, make_call, trials: int) -> float:
    """Median wall time of ``make_call()``'s timed call, each from the restored snapshot."""
    times = []
    for _ in range(trials):
        engine.restore(snapshot)
        times.append(protocol.timed(make_call()).wall_ms)
    return statistics.median(times)


def _measure(engine, protocol, prompts, trials: int, shift: bool) -> tuple[float, float, float]:
    """(hit, shift, miss) median TTFT in ms from one warmed snapshot (shift NaN if not)."""
    engine.clear()
    protocol.timed(engine.generation(prompts.warmup, 6))
    snapshot = engine.snapshot()
    hit = _median_ms(engine, protocol, snapshot, lambda: engine.first_token(prompts.hit), trials)
    miss = _median_ms(engine, protocol, snapshot, lambda: engine.first_token(prompts.miss), trials)
    shifted = math.nan
    if shift:
        shifted = _median_ms(
            engine,
            protocol,
            snapshot,
            lambda: engine.shifted_first_token(prompts.miss, prompts.removed),
            trials,
        )
    return hit, shifted, miss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--size", type=int, default=384, help="tokens of A and of B")
    parser.add_argument("--contexts", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--sequences", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from kvcache_exp.engines.base import EngineSettings
    from kvcache_exp.engines.llama_cpp_python import LlamaCppPython
    from kvcache_exp.measure import protocol
    from kvcache_exp.measure.prompts import build_prompts
    from kvcache_exp.models.catalog import ensure_model

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    entry = config["models"][config["model"]]
    model = ensure_model(entry, REPO / "models" / entry["file"])
    print(f"{model.name}, {args.threads} threads, A = B = {args.size}, Q = 16, ")
    print(f"median of {args.trials} trials each\n")
    print("| n_ctx | sequences | hit ms | shift ms | miss ms | shift − hit ms | recovered |")
    print("|---|---|---|---|---|---|---|")
    variants = [(n, 2) for n in args.contexts]
    if args.sequences:
        variants += [(args.contexts[0], 1)]
    for n_ctx, sequences in variants:
        settings = EngineSettings(
            n_ctx=n_ctx, n_batch=512, n_threads=args.threads, n_gpu_layers=-1, seed=42
        )
        engine_class = type("Engine", (LlamaCppPython,), {"sequences": sequences})
        engine = engine_class(model, settings)
        try:
            p = build_prompts(engine.tokenize, args.size, args.size, 16)
            hit, shift, miss = _measure(engine, protocol, p, args.trials, sequences == 2)
            recovered = (miss - shift) / (miss - hit)
            print(
                f"| {n_ctx} | {sequences} | {hit:.1f} | {shift:.1f} | {miss:.1f} | "
                f"{shift - hit:.1f} | {100 * recovered:.1f}% |"
            )
        finally:
            engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
