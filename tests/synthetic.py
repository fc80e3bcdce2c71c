"""Synthetic results tables with every column of a real run, for statistics and plot tests.

Real runs need the model and minutes of CPU; these tables are deterministic, so the
tests can state in advance which verdict each one must get.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kvcache_exp.columns import RESULT_COLUMNS

#: The seed's three configurations (A, B).
SEED_CONFIGS: tuple[tuple[int, int], ...] = ((512, 256), (384, 384), (256, 512))

#: TTFT in ms as a function of (size_a, size_b, size_q).
TtftModel = Callable[[int, int, int], float]


def constant_hit(a: int, b: int, q: int) -> float:
    """The seed's hit TTFT: about 28 ms whatever the configuration."""
    return 28.0


def linear_miss(a: int, b: int, q: int) -> float:
    """A miss TTFT linear in the tokens recomputed (B + Q): 0.5 ms/token + 20 ms."""
    return 20.0 + 0.5 * (b + q)


def _trial_rows(
    a: int,
    b: int,
    q: int,
    condition: str,
    ttft: float,
    decode: float,
    trials: int,
    rng,
    noise_cv: float = 0.01,
) -> list[dict]:
    """``trials`` rows of one configuration and condition, with multiplicative noise.

    The noise is normal with standard deviation ``noise_cv`` (1% by default); from 10%
    on it is log-normal with that coefficient of variation, so that no time is negative.
    """
    recomputed = q if condition == "hit" else b + q
    rows = []
    for trial in range(1, trials + 1):
        ttft_ms = ttft * _noise(rng, noise_cv)
        decode_tok_s = decode * _noise(rng, noise_cv)
        prefill_ms = 0.9 * ttft_ms
        gen_decode_ms = 49 / decode_tok_s * 1000
        total = ttft_ms + gen_decode_ms
        rows.append(
            {
                "trial": trial,
                "condition": condition,
                "warmup_time_ms": 100.0 + 0.3 * (a + b),
                "ttft_ms": ttft_ms,
                "total_time_ms": total,
                "throughput_tok_s": 50 / total * 1000,
                "prompt_tokens": recomputed + (a + b if condition == "hit" else 0),
                "completion_tokens": 50,
                "finish_reason": "length",
                "size_a": a,
                "size_b": b,
                "size_q": q,
                "tokens_recomputed": recomputed,
                "warmup_eval_tokens": a + b,
                "ttft_prefill_tokens": recomputed,
                "ttft_prefill_ms": prefill_ms,
                "ttft_decode_tokens": 0,
                "ttft_decode_ms": 0.0,
                "ttft_overhead_ms": ttft_ms - prefill_ms,
                "gen_prefill_tokens": recomputed,
                "gen_prefill_ms": prefill_ms,
                "gen_decode_tokens": 49,
                "gen_decode_ms": gen_decode_ms,
                "gen_overhead_ms": 1.0,
                "decode_tok_s": decode_tok_s,
                "cache_verified": True,
                "cache_note": "",
            }
        )
    return rows


def _noise(rng, cv: float) -> float:
    """A multiplicative noise factor with coefficient of variation ``cv``."""
    if cv < 0.10:  # the original 1% noise, drawn exactly as before
        return 1 + cv * rng.standard_normal()
    sigma = np.sqrt(np.log1p(cv * cv))
    return float(np.exp(sigma * rng.standard_normal()))


def make_results(
    configs: Sequence[tuple[int, int]] = SEED_CONFIGS,
    *,
    trials: int = 10,
    size_q: int = 16,
    hit_ttft: TtftModel = constant_hit,
    miss_ttft: TtftModel = linear_miss,
    hit_decode_tok_s: float = 210.0,
    miss_decode_tok_s: float = 210.0,
    seed: int = 0,
    noise_cv: float = 0.01,
) -> pd.DataFrame:
    """A results table for ``configs``, hit then miss per configuration, all columns in order.

    ``noise_cv`` is the trial-to-trial coefficient of variation of TTFT and decode tok/s.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for a, b in configs:
        hit = hit_ttft(a, b, size_q)
        miss = miss_ttft(a, b, size_q)
        rows += _trial_rows(a, b, size_q, "hit", hit, hit_decode_tok_s, trials, rng, noise_cv)
        rows += _trial_rows(a, b, size_q, "miss", miss, miss_decode_tok_s, trials, rng, noise_cv)
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def write_results(df: pd.DataFrame, folder: Path) -> list[Path]:
    """One seed-named CSV per configuration, as the experiment rule writes them."""
    paths = []
    for (a, b), group in df.groupby(["size_a", "size_b"], sort=False):
        path = folder / f"results_phase3b_a{a}_b{b}.csv"
        group.to_csv(path, index=False)
        paths.append(path)
    return paths
