"""GPU check of the in-process engine and the cures: a CUDA build of llama.cpp, every layer
offloaded (``benchmarks/gpu/build_and_check.sh`` builds it and runs this; on a CPU,
``GPU_LAYERS=0`` runs the same checks).

Stages, each recorded in $OUT/gpu_check.json with its error if it fails:
  offload   the engine on a random llama GGUF made here, every layer offloaded
  cures     every cure at S = 0, 4, 32 on 3 prompts: verified rows (cells proof), KL,
            the miss floor and cached_vs_full (an exact prefix hit vs a full recompute)
  run       one whole configuration through run_experiment (seed trials + cures)
  shift     hit / shift / miss TTFT at n_ctx 2048 and 8192
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path.cwd()
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]
OUT = Path(os.environ.get("OUT", "/tmp/gpu_out"))
OUT.mkdir(parents=True, exist_ok=True)
GPU_LAYERS = int(os.environ.get("GPU_LAYERS", "-1"))
report: dict = {"started": time.time()}


def save() -> None:
    (OUT / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))


def stage(name):
    def wrap(fn):
        t0 = time.time()
        try:
            report[name] = {"ok": True, **(fn() or {})}
        except Exception:
            report[name] = {"ok": False, "error": traceback.format_exc()[-3000:]}
        report[name]["seconds"] = round(time.time() - t0, 1)
        save()
        print(name, json.dumps(report[name], default=str)[:1500], flush=True)
        return fn

    return wrap


from llama_tiny import make_tiny_llama  # noqa: E402

from kvcache_exp.config.settings import merge  # noqa: E402
from kvcache_exp.engines.base import EngineSettings  # noqa: E402
from kvcache_exp.engines.llama_cpp_python import LlamaCppPython  # noqa: E402
from kvcache_exp.measure import cures, protocol  # noqa: E402
from kvcache_exp.measure.prompts import build_prompts  # noqa: E402

MODEL = make_tiny_llama(
    Path("/tmp/gpu_tiny.gguf"), n_layer=6, n_embd=512, n_head=8, n_ff=1536, n_ctx=8192, dtype="f16"
)


def engine(n_ctx: int = 2048) -> LlamaCppPython:
    settings = EngineSettings(
        n_ctx=n_ctx, n_batch=512, n_threads=8, n_gpu_layers=GPU_LAYERS, seed=1
    )
    return LlamaCppPython(MODEL, settings)


@stage("offload")
def _offload():
    eng = engine()
    try:
        info = eng.describe()
    finally:
        eng.close()
    keys = ("gpu_offload_supported", "layers_offloaded", "layers_total", "offload_log")
    return {k: info.get(k) for k in (*keys, "llama_cpp_system_info")}


@stage("cures")
def _cures():
    import pandas as pd

    from kvcache_exp.columns import CURE_COLUMNS

    eng = engine()
    rows: list[dict] = []

    def prompt_for(variant, keep, avoid):
        return build_prompts(
            eng.tokenize, 256, 256, 16, size_s=keep, avoid_q_first=avoid, variant=variant
        )

    try:
        cures.run_cures(
            eng,
            prompt_for,
            keep_sizes=[0, 4, 32],
            trials=3,
            warmup_tokens=6,
            settle_s=0.0,
            recompute_shares=[0.25, 0.5],
            quality_tokens=32,
            seed=42,
            rows=rows,
        )
    finally:
        eng.close()
    df = pd.DataFrame(rows, columns=list(CURE_COLUMNS))
    df.to_csv(OUT / "gpu_cures.csv", index=False)
    table = df.groupby(["keep_tokens", "cure"])[["kl_mean", "top1_agreement", "ttft_ms"]].median()
    return {
        "all_verified": bool(df["cache_verified"].all()),
        "notes": sorted(set(df["cache_note"].dropna()) - {""})[:5],
        "medians": {f"{k}|{c}": v for (k, c), v in table.round(5).T.to_dict().items()},
    }


@stage("run")
def _run():
    import pandas as pd

    from kvcache_exp.measure.experiment import run_experiment
    from kvcache_exp.paths import Layout

    config = {
        "trials": 3,
        "settle_ms": 0,
        "max_tokens": 16,
        "n_gpu_layers": GPU_LAYERS,
        "n_threads": 8,
        "quality_prompts": 2,
        "cure_keep_tokens": [0, 4],
        "recompute_shares": [0.25],
    }
    settings = merge(config, {"size_a": 128, "size_b": 128}, n_threads=8)
    layout = Layout(results=str(OUT / "results"), prompts=str(OUT / "prompts"))
    result = run_experiment(MODEL, settings, layout.configuration("a128_b128"))
    med = result.results.groupby("condition")["ttft_ms"].median().round(3).to_dict()
    return {
        "results_verified": bool(result.results["cache_verified"].all()),
        "cures_verified": bool(result.cures["cache_verified"].all()),
        "ttft_median_ms": med,
        "cure_rows": len(result.cures),
        "files": sorted(p.name for p in (OUT / "results").iterdir()),
        "decode_tok_s": float(pd.to_numeric(result.results["decode_tok_s"]).median()),
    }


@stage("shift")
def _shift():
    found = {}
    for n_ctx in (2048, 8192):
        eng = engine(n_ctx)
        try:
            p = build_prompts(eng.tokenize, 768, 768, 16)
            eng.clear()
            protocol.timed(eng.generation(p.warmup, 6))
            snap = eng.snapshot()
            times: dict[str, list[float]] = {"hit": [], "shift": [], "miss": []}
            for _ in range(7):
                for name, make in (
                    ("hit", lambda: eng.first_token(p.hit)),  # noqa: B023
                    ("shift", lambda: eng.shifted_first_token(p.miss, p.removed)),  # noqa: B023
                    ("miss", lambda: eng.first_token(p.miss)),  # noqa: B023
                ):
                    eng.restore(snap)
                    times[name].append(protocol.timed(make()).wall_ms)
            found[str(n_ctx)] = {k: round(statistics.median(v), 3) for k, v in times.items()}
        finally:
            eng.close()
    return found


report["finished"] = time.time()
save()
