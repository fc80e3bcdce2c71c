"""Benchmark: the same configuration in-process and through llama-server, interleaved.

For one configuration (A, B, Q) on the embedded model, in one run:

* hit and miss TTFT through llama-cpp-python in-process and through a llama-server this
  script starts (the experiment's ``engine: llama_server``), trial by trial, alternating
  which engine and which condition goes first, with the protocol's own calls (clear,
  warm ``[A, B]``, timed first token) and the same settings for both (threads, batch,
  flash attention, KV cache types). Only trials whose counts match the design (hit: |Q|
  evaluated, |A|+|B| reused; miss: |B|+|Q| evaluated) enter the medians;
* the HTTP path's own overhead: the server's wall time minus the time the server reports
  for the call (``prompt_ms + predicted_ms``);
* llama-bench, built from the same llama.cpp tree, at the same sizes and settings, as the
  engine's own reference: ``pp(B+Q)`` at depth 0 for the miss and ``pp(Q)`` at depth
  ``A+B`` for the hit.

It prints the machine, the settings and a Markdown table; no thresholds.

    .venv/bin/python benchmarks/server_vs_inprocess.py [--size-a 512] [--size-b 256]
        [--query 16] [--trials 10] [--threads T] [--flash-attn] [--cache-type f16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and b == b and a == a else "n/a"


def _ms(value: float) -> str:
    return f"{value:.2f}" if value == value else "n/a"


def llama_bench(
    binary: Path, model: Path, n_prompt: int, depth: int, args: argparse.Namespace
) -> float:
    """Median ms of llama-bench's prompt processing of ``n_prompt`` tokens after ``depth``
    tokens already in the cache, with the benchmark's settings."""
    cmd = [
        str(binary),
        "-m", str(model),
        "-p", str(n_prompt),
        "-n", "0",
        "-d", str(depth),
        "-r", str(args.bench_repetitions),
        "-t", str(args.threads),
        "-b", "512",
        "-ub", "512",
        "-ngl", str(args.n_gpu_layers),
        "-fa", "on" if args.flash_attn else "off",
        "-ctk", args.cache_type,
        "-ctv", args.cache_type,
        "-o", "json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({proc.returncode}): {proc.stderr[-2000:]}")
    (test,) = json.loads(proc.stdout)
    samples = test.get("samples_ns") or [test["avg_ns"]]
    return statistics.median(samples) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-a", type=int, default=512)
    parser.add_argument("--size-b", type=int, default=256)
    parser.add_argument("--query", type=int, default=16)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    parser.add_argument("--flash-attn", action="store_true", help="default: off, as in-process")
    parser.add_argument("--cache-type", default="f16", help="KV cache type, keys and values")
    parser.add_argument("--bench-repetitions", type=int, default=10)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    import llama_cpp

    from kvcache_exp import provenance
    from kvcache_exp.engines.base import EngineSettings
    from kvcache_exp.engines.llama_cpp_python import LlamaCppPython
    from kvcache_exp.engines.llama_server import start_llama_server
    from kvcache_exp.engines.managed_server import find_llama_server
    from kvcache_exp.measure import protocol
    from kvcache_exp.measure.prompts import build_prompts
    from kvcache_exp.models.catalog import ensure_model

    started = time.monotonic()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    entry = config["models"][config["model"]]
    model = ensure_model(entry, REPO / "models" / entry["file"])
    a, b, q = args.size_a, args.size_b, args.query
    n_ctx = max(2048, a + b + q + 64)
    common = {
        "n_ctx": n_ctx,
        "n_batch": 512,
        "n_gpu_layers": args.n_gpu_layers,
        "flash_attn": args.flash_attn,
        "cache_type_k": args.cache_type,
        "cache_type_v": args.cache_type,
    }
    local = LlamaCppPython(model, EngineSettings(n_threads=args.threads, seed=42, **common))
    server = start_llama_server(model, threads=args.threads, **common)
    engines = {"in-process": local, "llama-server": server}
    walls: dict[tuple[str, str], list[float]] = {}
    overheads: dict[tuple[str, str], list[float]] = {}
    engine_ms: dict[tuple[str, str], list[float]] = {}
    unverified = 0
    try:
        prompts = build_prompts(local.tokenize, a, b, q)
        for name in ("warmup", "hit", "miss"):
            if server.tokenize(prompts.text(name)) != prompts.tokens(name):
                raise RuntimeError(f"the server tokenizes the {name} prompt differently")
        design = {"hit": (prompts.hit, q, a + b), "miss": (prompts.miss, b + q, 0)}
        for trial in range(1, args.trials + 1):
            names = list(engines) if trial % 2 else list(reversed(engines))
            for name in names:
                engine = engines[name]
                conditions = ("hit", "miss") if (trial // 2) % 2 == 0 else ("miss", "hit")
                for condition in conditions:
                    prompt, expected, cached = design[condition]
                    engine.clear()
                    protocol.timed(engine.generation(prompts.warmup, 6))
                    m = protocol.timed(engine.first_token(prompt))
                    if m.eval_tokens != expected or m.result.cached_tokens != cached:
                        unverified += 1
                        continue
                    key = (name, condition)
                    walls.setdefault(key, []).append(m.wall_ms)
                    overheads.setdefault(key, []).append(m.overhead_ms)
                    engine_ms.setdefault(key, []).append(m.prefill_ms + m.decode_ms)
        build = server.props.get("build_info")
    finally:
        server.close()
        local.close()

    bench = find_llama_server().with_name("llama-bench")
    reference = {
        "miss": llama_bench(bench, model, b + q, 0, args),
        "hit": llama_bench(bench, model, q, a + b, args),
    }

    def med(table: dict, name: str, condition: str) -> float:
        return _median(table.get((name, condition), []))

    print(f"machine: {provenance.cpu_name()}, {os.cpu_count()} logical CPUs")
    print(
        f"model: {model.name}; A={a}, B={b}, Q={q}; {args.threads} threads; flash attention "
        f"{'on' if args.flash_attn else 'off'}; KV cache {args.cache_type}; n_gpu_layers "
        f"{args.n_gpu_layers}; batch 512"
    )
    print(
        f"llama-cpp-python {llama_cpp.__version__}; llama-server {build}; llama-bench "
        f"{bench}; {args.trials} trials per engine and condition, interleaved "
        f"({unverified} unverified, left out); llama-bench {args.bench_repetitions} "
        "repetitions"
    )
    print()
    print("| median, ms | hit TTFT | miss TTFT | miss / hit |")
    print("|---|---|---|---|")
    rows = {}
    for name in engines:
        hit, miss = med(walls, name, "hit"), med(walls, name, "miss")
        rows[name] = (hit, miss)
        print(f"| {name} | {_ms(hit)} | {_ms(miss)} | {_ratio(miss, hit)} |")
    (lh, lm), (sh, sm) = rows["in-process"], rows["llama-server"]
    print(f"| llama-server / in-process | {_ratio(sh, lh)} | {_ratio(sm, lm)} | |")
    print(
        f"| in-process: llama.cpp's own time | {_ms(med(engine_ms, 'in-process', 'hit'))} | "
        f"{_ms(med(engine_ms, 'in-process', 'miss'))} | |"
    )
    print(
        f"| llama-server: its reported time (prompt_ms + predicted_ms) | "
        f"{_ms(med(engine_ms, 'llama-server', 'hit'))} | "
        f"{_ms(med(engine_ms, 'llama-server', 'miss'))} | |"
    )
    print(
        f"| HTTP path overhead (server wall − server time) | "
        f"{_ms(med(overheads, 'llama-server', 'hit'))} | "
        f"{_ms(med(overheads, 'llama-server', 'miss'))} | |"
    )
    rh, rm = reference["hit"], reference["miss"]
    print(
        f"| llama-bench: pp({q}) at depth {a + b} / pp({b + q}) at depth 0 | {_ms(rh)} | "
        f"{_ms(rm)} | {_ratio(rm, rh)} |"
    )
    print(f"| in-process / llama-bench | {_ratio(lh, rh)} | {_ratio(lm, rm)} | |")
    print(f"| llama-server / llama-bench | {_ratio(sh, rh)} | {_ratio(sm, rm)} | |")
    print(f"\nrun time: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
