"""The cures, run by the package's own code on tiny checkpoints the tests make.

A one-layer RoPE model is the case where a shift is exact: layer 0's keys and values of
B depend only on B's tokens and positions, and the shift re-rotates the keys to their
new positions, so the cure must give the full recompute's distributions within float
tolerance. With two layers, B's states in layer 1 attended to A, so the shift must
differ measurably; GPT-2's absolute position embeddings cannot be corrected at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from llama_tiny import make_tiny_gpt2_gguf, make_tiny_llama

from kvcache_exp.engines.base import EngineSettings
from kvcache_exp.engines.llama_cpp_python import LlamaCppPython
from kvcache_exp.measure import cures, quality
from kvcache_exp.measure.prompts import build_prompts

SHARES = [0.25, 0.5]


def _engine(path: Path, cache_type: str = "f32") -> LlamaCppPython:
    settings = EngineSettings(
        n_ctx=1024,
        n_batch=512,
        n_threads=2,
        n_gpu_layers=0,
        seed=1,
        cache_type_k=cache_type,
        cache_type_v=cache_type,
    )
    return LlamaCppPython(path, settings)


def _run(path: Path, keep: int = 0, cache_type: str = "f32"):
    engine = _engine(path, cache_type)
    try:
        prompts = build_prompts(engine.tokenize, 48, 40, 12, size_s=keep)
        df = cures.run_cures(
            engine,
            prompts,
            trials=2,
            warmup_tokens=3,
            settle_s=0.0,
            recompute_shares=SHARES,
            quality_tokens=12,
        )
    finally:
        engine.close()
    return prompts, df


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cure-models")
    return {
        "llama1": make_tiny_llama(root / "llama1.gguf", n_layer=1),
        "llama2": make_tiny_llama(root / "llama2.gguf", n_layer=2),
        "gpt2": make_tiny_gpt2_gguf(root / "gpt2.gguf", n_layer=1),
    }


@pytest.mark.parametrize("keep", [0, 8])
def test_one_layer_shift_is_the_recompute(checkpoints, keep):
    prompts, df = _run(checkpoints["llama1"], keep=keep)
    assert df["cache_verified"].all(), df["cache_note"].tolist()
    shift = df[df.cure == "shift"]
    # Measured about 1e-12 nats with an F32 cache; rounding alone stays far below 1e-6.
    assert (shift["kl_mean"] < 1e-6).all()
    assert (shift["top1_agreement"] == 1.0).all()
    assert (shift["first_divergence"] == 12).all()
    assert set(df["position_correction"]) == {"rope"}


def test_counts_follow_the_design(checkpoints):
    prompts, df = _run(checkpoints["llama1"], keep=8)
    b, q = len(prompts.b.tokens), len(prompts.q.tokens)
    trials = df[df.trial > 0]
    expected = {"hit": q, "miss": b + q, "shift": q}
    expected |= {f"shift_recompute_{r:g}": round(r * b) + q for r in SHARES}
    assert sorted(trials["cure"].unique()) == sorted(expected)
    for row in trials.itertuples():
        assert row.tokens_expected == expected[row.cure]
        assert row.prefill_tokens + row.decode_tokens == expected[row.cure]
    # every trial restored the same warmed cache: [S, A, B] and the warm-up's tokens
    held = len(prompts.warmup) + 3 - 1
    assert set(trials["restored_pos_max"]) == {held - 1}
    # the order of the cures rotates from trial to trial
    firsts = trials[trials.order == 1].set_index("trial")["cure"]
    assert firsts[1] != firsts[2]


def test_two_layer_shift_differs_and_recomputing_more_helps(checkpoints):
    _, df = _run(checkpoints["llama2"])
    assert df["cache_verified"].all()
    kl = df[df.trial == 1].set_index("cure")["kl_mean"]
    assert kl["shift"] > 0.05  # measured about 0.3 nats
    assert kl["miss"] < 1e-6
    assert kl["shift_recompute_0.5"] < kl["shift"]
    floor = df[df.cure == "noise_floor"].iloc[0]
    assert floor["kl_mean"] < 1e-3


def test_gpt2_shift_is_uncorrected_and_differs(checkpoints):
    _, df = _run(checkpoints["gpt2"])
    assert df["cache_verified"].all()
    assert set(df["position_correction"]) == {"none (absolute positions)"}
    assert (df[df.cure == "shift"]["kl_mean"] > 0.01).all()  # measured about 0.07


def test_a_cure_that_evaluates_other_tokens_is_caught(checkpoints, monkeypatch):
    """An engine that recomputes one token more than asked: the counters give it away."""
    real = LlamaCppPython.shifted_first_token

    def one_more(self, tokens, removed, recompute=0):
        return real(self, tokens, removed, recompute + 1)

    monkeypatch.setattr(LlamaCppPython, "shifted_first_token", one_more)
    _, df = _run(checkpoints["llama1"])
    shifted = df[df.cure.str.startswith("shift")]
    assert not shifted["cache_verified"].any()
    assert shifted["cache_note"].str.contains("the call evaluated").all()
    assert df[df.cure.isin(["hit", "miss"])]["cache_verified"].all()


def test_quality_metrics_match_hand_computation():
    ref = np.log(np.array([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    cure = np.log(np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]))
    next_tokens = np.array([0, 0, 2])
    got = quality.compare(ref, cure, next_tokens, n_continuation=2)
    kl = [
        0.7 * np.log(0.7 / 0.6) + 0.2 * np.log(0.2 / 0.3),
        0.5 * np.log(0.5 / 0.2) + 0.25 * np.log(0.25 / 0.5) + 0.25 * np.log(0.25 / 0.3),
        0.0,
    ]
    assert got.kl_mean == pytest.approx(np.mean(kl))
    assert got.kl_p99 == pytest.approx(np.percentile(kl, 99))
    assert got.top1_agreement == pytest.approx(2 / 3)  # the middle row's argmax differs
    dp = [0.6 - 0.7, 0.2 - 0.5, 0.8 - 0.8]
    assert got.rms_dp == pytest.approx(np.sqrt(np.mean(np.square(dp))))
    # continuation rows are the last two; in the first of them the cure's argmax differs
    assert got.first_divergence == 0
    assert got.positions == 3


def test_quality_without_divergence_counts_every_continuation_position():
    """The same distributions never diverge, even where the reference's generated token is
    not its batch argmax (generation decodes one token at a time, which rounds apart)."""
    logp = np.log(np.array([[0.9, 0.1], [0.2, 0.8]]))
    got = quality.compare(logp, logp, np.array([1, 1]), n_continuation=2)
    assert (got.kl_mean, got.top1_agreement, got.rms_dp) == (0.0, 1.0, 0.0)
    assert got.first_divergence == 2
