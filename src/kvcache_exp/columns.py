"""The column layout of every CSV the workflow writes.

The seed experiment fixed the names and the order of the first columns; tools that
read the seed's CSVs must keep working, so those come first and never change. Our
extra measurements follow them.
"""

from __future__ import annotations

#: The seed's results columns, in the seed's order.
SEED_RESULT_COLUMNS: tuple[str, ...] = (
    "trial",
    "condition",
    "warmup_time_ms",
    "ttft_ms",
    "total_time_ms",
    "throughput_tok_s",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
)

#: Columns we add after the seed's, from the engine's own counters and the design.
EXTRA_RESULT_COLUMNS: tuple[str, ...] = (
    "size_a",  # tokens in context A (removed on a miss)
    "size_b",  # tokens in context B (kept)
    "size_q",  # tokens in the query Q
    "tokens_recomputed",  # tokens the TTFT call must evaluate by design (Q on a hit, B+Q on a miss)
    "warmup_eval_tokens",  # tokens the engine evaluated while warming [A, B]
    "ttft_prefill_tokens",  # tokens evaluated in multi-token batches during the TTFT call
    "ttft_prefill_ms",  # the engine's time for those batches
    "ttft_decode_tokens",  # single-token decodes during the TTFT call
    "ttft_decode_ms",
    "ttft_overhead_ms",  # ttft_ms not spent inside the engine's evaluation
    "gen_prefill_tokens",  # the same four counters for the max_tokens generation
    "gen_prefill_ms",
    "gen_decode_tokens",
    "gen_decode_ms",
    "gen_overhead_ms",
    "decode_tok_s",  # gen_decode_tokens / gen_decode_ms: decoding alone
    "cache_verified",  # True when every count agrees with the design (see cache_note)
    "cache_note",  # why a row is not verified, empty otherwise
    "order",  # 1 when this condition ran first in its trial, 2 when second
    "cleared_pos_max",  # the cache's highest position after clearing (-1: empty)
)

RESULT_COLUMNS: tuple[str, ...] = SEED_RESULT_COLUMNS + EXTRA_RESULT_COLUMNS

#: The seed's prompts CSV.
PROMPT_COLUMNS: tuple[str, ...] = ("prompt_name", "token_count", "prompt_text", "sample_output")
PROMPT_NAMES: tuple[str, ...] = ("warmup", "hit", "miss")

CONDITIONS: tuple[str, ...] = ("hit", "miss")

#: The cures CSV (``results/cures_phase3b_a{A}_b{B}.csv``): one row per kept prefix size,
#: trial and cure. Trial t measures every cure on its own prompt t (the prompts differ in
#: text, not in size), so the trials are both the cures' timing repeats and the units of
#: the quality intervals.
CURE_COLUMNS: tuple[str, ...] = (
    "trial",  # 1..quality_prompts: the prompt this trial measured
    "cure",  # hit, miss, shift, shift_tail_{r}, shift_head_{r}, server_cache_reuse, or
    # cached_vs_full (not a cure: an exact prefix hit against a full recompute, untimed)
    "order",  # position of this cure within its trial (a shuffled order, fixed seed)
    "predecessor",  # the cure run just before it in the same trial ("" for the first)
    "keep_tokens",  # tokens of the kept prefix S before A
    "size_a",
    "size_b",
    "size_q",
    "position_correction",  # rope, or none (absolute positions: a shift cannot correct)
    "recompute_share",  # r: share of B recomputed after the shift (NaN: not a shift)
    "recompute_where",  # head (B's first tokens) or tail (its last), "" otherwise
    "recompute_tokens",  # round(r * size_b)
    "tokens_expected",  # tokens the timed call must evaluate by design
    "ttft_ms",  # wall time of the cure's whole work: cache operations, evaluation, 1 token
    "prefill_tokens",
    "prefill_ms",
    "decode_tokens",
    "decode_ms",
    "overhead_ms",
    "restored_pos_max",  # the cache's highest position after restoring the warm snapshot
    "cache_pos_min",  # the lowest position the sequence holds after the call
    "cache_cells",  # cells the sequence holds after the call (positions 0.. each once)
    "cache_verified",
    "cache_note",
    "kl_mean",  # KL(exact || cure) over Q's positions and the continuation, mean (nats)
    "kl_p99",  # its 99th percentile, where there are at least 100 positions (else empty)
    "kl_max",  # its largest value
    "top1_agreement",  # share of positions whose most likely token is the exact answer's
    "rms_dp",  # RMS of the change in the probability of the reference token
    "first_divergence",  # first continuation position where greedy generation diverges
    "quality_positions",  # positions compared
)
