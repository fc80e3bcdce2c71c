"""The trial protocol, checked with llama.cpp's own counters rather than assumed."""

from __future__ import annotations

import llama_cpp

from kvcache_exp import protocol
from kvcache_exp.prompts import build_prompts


def _kv_max_pos(llm) -> int:
    """Highest position cached for sequence 0 (-1 when the KV cache is empty)."""
    return llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(llm.ctx), 0)


def test_reset_alone_keeps_kv_data_and_clear_removes_it(llm, tokenize):
    p = build_prompts(tokenize, 40, 20, 4)
    protocol.clear_kv_cache(llm)
    protocol.timed_completion(llm, p.warmup, 2, seed=1)
    assert _kv_max_pos(llm) >= len(p.warmup) - 1
    llm.reset()  # the seed's point: this only rewinds the token counter
    assert llm.n_tokens == 0
    assert _kv_max_pos(llm) >= len(p.warmup) - 1
    protocol.clear_kv_cache(llm)
    assert _kv_max_pos(llm) == -1


def test_clearing_forces_the_whole_prompt_to_be_evaluated(llm, tokenize):
    p = build_prompts(tokenize, 40, 20, 4)
    protocol.clear_kv_cache(llm)
    first = protocol.timed_completion(llm, p.hit, 1, seed=1)
    assert first.eval_tokens == len(p.hit)
    # Without clearing, the same prompt is served from the cache ...
    protocol.clear_kv_cache(llm)
    protocol.timed_completion(llm, p.warmup, 1, seed=1)
    reused = protocol.timed_completion(llm, p.hit, 1, seed=1)
    assert reused.eval_tokens == len(p.q.tokens)
    # ... and after clearing it is evaluated in full again.
    protocol.clear_kv_cache(llm)
    again = protocol.timed_completion(llm, p.hit, 1, seed=1)
    assert again.prefill_tokens == len(p.hit)


def test_trial_hit_and_miss_evaluate_what_the_design_says(llm, tokenize):
    p = build_prompts(tokenize, 48, 24, 6)
    kwargs = {"warmup_tokens": 6, "max_tokens": 8, "settle_s": 0.0, "seed": 1}
    hit = protocol.run_trial(llm, p.warmup, p.hit, **kwargs)
    miss = protocol.run_trial(llm, p.warmup, p.miss, **kwargs)
    for trial in (hit, miss):
        # warm-up: all of [A, B] in one batch, then one decode per generated token but the last
        assert trial.warmup.prefill_tokens == len(p.warmup)
        assert trial.warmup.decode_tokens == 5
    assert hit.ttft.eval_tokens == len(p.q.tokens)
    assert miss.ttft.eval_tokens == len(p.miss)
    assert hit.ttft.completion_tokens == 1
    for call in (hit.ttft, miss.ttft, hit.generation):
        assert call.wall_ms > 0
        assert call.overhead_ms < call.wall_ms
    # The generation continues from the cached prompt: no prefill, only decodes.
    assert hit.generation.prefill_tokens == 0
    # Each generated token is evaluated before the next is sampled; the first one was
    # sampled by the TTFT call's logits, and a token that ends at EOS is evaluated too.
    gen = hit.generation
    expected = gen.completion_tokens - (1 if gen.finish_reason == "length" else 0)
    assert gen.decode_tokens == expected
