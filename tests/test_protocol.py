"""The trial protocol and the in-process engine, checked with llama.cpp's own counters
and the cache's own positions rather than assumed."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from kvcache_exp.engines.base import CallResult
from kvcache_exp.measure import protocol
from kvcache_exp.measure.prompts import build_prompts


def test_reset_alone_keeps_kv_data_and_clear_removes_it(model_path, engine, tokenize):
    """The seed's point, on llama-cpp-python's own Llama: reset() only rewinds its token
    counter, the KV data stays; the engine's clear() empties the cache."""
    import llama_cpp

    p = build_prompts(tokenize, 40, 20, 4)
    llm = llama_cpp.Llama(str(model_path), n_ctx=256, verbose=False)
    try:
        llm.eval(p.warmup)
        memory = llama_cpp.llama_get_memory(llm.ctx)
        assert llama_cpp.llama_memory_seq_pos_max(memory, 0) == len(p.warmup) - 1
        llm.reset()
        assert llm.n_tokens == 0
        assert llama_cpp.llama_memory_seq_pos_max(memory, 0) == len(p.warmup) - 1
    finally:
        llm.close()
    engine.clear()
    protocol.timed(engine.generation(p.warmup, 2))
    assert engine.pos_max() >= len(p.warmup) - 1
    assert engine.clear() == -1
    assert engine.pos_max() == -1


def test_clearing_forces_the_whole_prompt_to_be_evaluated(engine, tokenize):
    p = build_prompts(tokenize, 40, 20, 4)
    engine.clear()
    first = protocol.timed(engine.first_token(p.hit))
    assert first.eval_tokens == len(p.hit)
    # Without clearing, the same prompt is served from the cache ...
    engine.clear()
    protocol.timed(engine.first_token(p.warmup))
    reused = protocol.timed(engine.first_token(p.hit))
    assert reused.eval_tokens == len(p.q.tokens)
    # ... and after clearing it is evaluated in full again.
    engine.clear()
    again = protocol.timed(engine.first_token(p.hit))
    assert again.prefill_tokens == len(p.hit)


def test_trial_hit_and_miss_evaluate_what_the_design_says(engine, tokenize):
    p = build_prompts(tokenize, 48, 24, 6)
    kwargs = {"warmup_tokens": 6, "max_tokens": 8, "settle_s": 0.0}
    hit = protocol.run_trial(engine, p.warmup, p.hit, **kwargs)
    miss = protocol.run_trial(engine, p.warmup, p.miss, **kwargs)
    for trial in (hit, miss):
        assert trial.cleared_pos_max == -1
        # warm-up: all of [A, B] in one batch, then one decode per generated token but the last
        assert trial.warmup.prefill_tokens == len(p.warmup)
        warm = trial.warmup
        assert warm.decode_tokens == warm.completion_tokens - (warm.finish_reason == "length")
        assert trial.ttft.completion_tokens == 1
    assert hit.ttft.eval_tokens == len(p.q.tokens)
    assert miss.ttft.eval_tokens == len(p.miss)
    for call in (hit.ttft, miss.ttft, hit.generation):
        assert call.wall_ms > 0
        assert call.overhead_ms < call.wall_ms
    # The generation continues from the cached prompt: no prefill, only decodes.
    assert hit.generation.prefill_tokens == 0
    # Each generated token is evaluated before the next is sampled; the first one is
    # sampled from the TTFT call's logits, and a token that ends at EOS is evaluated too.
    gen = hit.generation
    assert gen.completion_tokens <= 8
    expected = gen.completion_tokens - (1 if gen.finish_reason == "length" else 0)
    assert gen.decode_tokens == expected


def test_the_first_token_is_the_one_a_generation_starts_with(engine, tokenize):
    p = build_prompts(tokenize, 30, 20, 5)
    engine.clear()
    first = protocol.timed(engine.first_token(p.hit)).result.tokens
    engine.clear()
    generated = protocol.timed(engine.generation(p.hit, 5)).result.tokens
    assert len(first) == 1
    assert generated[:1] == first


def test_cache_positions_follow_every_call(engine, tokenize):
    """The engine's record of what is cached and the KV cache's cells agree after each
    call: one cell per cached token, at positions 0, 1, ..."""
    p = build_prompts(tokenize, 30, 20, 5)
    engine.clear()
    warm = protocol.timed(engine.generation(p.warmup, 3))
    held = len(p.warmup) + warm.completion_tokens - 1
    assert engine.pos_max() == held - 1
    assert len(engine.cached) == held
    assert sorted(engine.cache_positions()) == list(range(held))
    protocol.timed(engine.first_token(p.miss))
    assert engine.pos_max() == len(p.miss) - 1
    assert engine.cached == p.miss
    assert sorted(engine.cache_positions()) == list(range(len(p.miss)))


class _RecordedCall:
    """A prepared call of the test's own that writes what happens, in order, to ``events``:
    the engine's work (``run``) and the read-out (``result``) beside the clock's readings."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def run(self) -> None:
        self.events.append("run")

    def result(self) -> CallResult:
        self.events.append("result")
        return CallResult([7], "length", 3, 1.0, 0, 0.0)


def test_only_the_engines_work_is_inside_the_timer(monkeypatch):
    """What :func:`protocol.timed` times is pinned by the order of events, not by a
    duration: the clock is read, the call runs, the clock is read again, and only then is
    the result read out. The clock is the test's own (two fixed readings, 250 ms apart),
    so the measured wall time is exactly their difference."""
    events: list[str] = []
    readings = iter([10.0, 10.25])

    def clock() -> float:
        events.append("clock")
        return next(readings)

    # Only the protocol module sees the test's clock; pytest keeps the real one.
    monkeypatch.setattr(protocol, "time", SimpleNamespace(perf_counter=clock, sleep=time.sleep))
    measured = protocol.timed(_RecordedCall(events))
    assert events == ["clock", "run", "clock", "result"]
    assert measured.wall_ms == pytest.approx(250.0)
    assert measured.result.tokens == [7] and measured.eval_tokens == 3


def test_a_calls_timing_columns():
    """The cures CSV's timing columns of one call: its wall time and how the engine spent
    it, the rest being overhead."""
    call = protocol.CallMeasurement(10.0, CallResult([1], "length", 6, 4.0, 2, 1.5))
    assert call.timing_columns() == {
        "ttft_ms": 10.0,
        "prefill_tokens": 6,
        "prefill_ms": 4.0,
        "decode_tokens": 2,
        "decode_ms": 1.5,
        "overhead_ms": 4.5,
    }
    assert (call.eval_tokens, call.completion_tokens, call.finish_reason) == (8, 1, "length")
