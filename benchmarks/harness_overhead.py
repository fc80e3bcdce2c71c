"""Benchmark: the harness's own time inside the timed TTFT call.

``ttft_overhead_ms`` is the wall time of the timed call that llama.cpp did not spend
evaluating tokens: sampling the one token, and whatever Python and ctypes do inside
the timed region. This measures it on the embedded model for the seed's three
configurations, hit and miss, side by side in one run for

* the protocol's call (``LlamaCppPython.first_token``: batches laid out before the
  timer, then only cache removal, decode and one greedy sample inside it), and
* the seed's call, llama-cpp-python's ``create_completion(max_tokens=1)``, which also
  fills the batch token by token, detokenizes and builds a response inside the call,

and prints the medians, also as a share of the median TTFT. It then breaks down the
protocol's miss overhead: removing the warmed cache cells, and one greedy sample,
each timed alone; the rest is ``llama_decode``'s own work outside its prefill timer.

    .venv/bin/python benchmarks/harness_overhead.py [--trials N] [--threads T]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import llama_cpp
import yaml

REPO = Path(__file__).resolve().parents[1]


def _clear(llm) -> None:
    """The seed's clearing: rewind the token counter and empty the KV cache."""
    llm.reset()
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)


def _seed_call(llm, warmup: list[int], prompt: list[int]) -> tuple[float, float]:
    """(wall ms, overhead ms) of the seed's create_completion(max_tokens=1) after warming,
    on llama-cpp-python's own Llama with the same settings as the engine."""
    _clear(llm)
    llm.create_completion(warmup, max_tokens=6, temperature=0.0, top_k=1)
    llama_cpp.llama_synchronize(llm.ctx)
    llama_cpp.llama_perf_context_reset(llm.ctx)
    start = time.perf_counter()
    llm.create_completion(prompt, max_tokens=1, temperature=0.0, top_k=1)
    wall = (time.perf_counter() - start) * 1000.0
    llama_cpp.llama_synchronize(llm.ctx)
    data = llama_cpp.llama_perf_context(llm.ctx)
    _clear(llm)
    return wall, wall - data.t_p_eval_ms - data.t_eval_ms


def _parts(engine, protocol, prompts) -> tuple[float, float]:
    """(ms to remove the warmed cells, ms for one greedy sample), each timed alone."""
    engine.clear()
    protocol.timed(engine.generation(prompts.warmup, 6))
    start = time.perf_counter()
    llama_cpp.llama_memory_seq_rm(engine.mem, 0, 0, -1)
    removal = (time.perf_counter() - start) * 1000.0
    engine.clear()
    protocol.timed(engine.generation(prompts.warmup, 6))
    protocol.timed(engine.first_token(prompts.miss))
    start = time.perf_counter()
    llama_cpp.llama_sampler_sample(engine.sampler, engine.ctx, -1)
    sample = (time.perf_counter() - start) * 1000.0
    engine.clear()
    return removal, sample


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
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
    settings = EngineSettings(
        n_ctx=2048, n_batch=512, n_threads=args.threads, n_gpu_layers=-1, seed=42
    )
    engine = LlamaCppPython(model, settings)
    llm = llama_cpp.Llama(
        str(model),
        n_ctx=2048,
        n_batch=512,
        n_ubatch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_gpu_layers=-1,
        verbose=False,
    )
    print(f"{model.name}, {args.threads} threads, {args.trials} trials per cell\n")
    print("| config | condition | call | median TTFT ms | median overhead ms | share |")
    print("|---|---|---|---|---|---|")
    try:
        for exp in config["experiments"]:
            p = build_prompts(engine.tokenize, exp["size_a"], exp["size_b"], 16)
            for condition, prompt in (("hit", p.hit), ("miss", p.miss)):
                ours, seeds = [], []
                for _ in range(args.trials):
                    engine.clear()
                    protocol.timed(engine.generation(p.warmup, 6))
                    m = protocol.timed(engine.first_token(prompt))
                    ours.append((m.wall_ms, m.overhead_ms))
                    seeds.append(_seed_call(llm, p.warmup, prompt))
                for name, cells in (("protocol", ours), ("create_completion", seeds)):
                    wall = statistics.median(c[0] for c in cells)
                    over = statistics.median(c[1] for c in cells)
                    print(
                        f"| {exp['size_a']}/{exp['size_b']} | {condition} | {name} | "
                        f"{wall:.1f} | {over:.3f} | {100 * over / wall:.2f}% |"
                    )
            parts = [_parts(engine, protocol, p) for _ in range(args.trials)]
            print(
                f"| {exp['size_a']}/{exp['size_b']} | miss, parts | "
                "removing the warmed cells; one sample | | "
                f"{statistics.median(r for r, _ in parts):.3f}; "
                f"{statistics.median(s for _, s in parts):.3f} | |"
            )
    finally:
        engine.close()
        llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
