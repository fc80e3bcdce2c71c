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

#: Columns we add after the seed's, from llama.cpp's own counters and the design.
EXTRA_RESULT_COLUMNS: tuple[str, ...] = (
    "size_a",  # tokens in context A (removed on a miss)
    "size_b",  # tokens in context B (kept)
    "size_q",  # tokens in the query Q
    "tokens_recomputed",  # tokens the TTFT call must evaluate by design (Q on a hit, B+Q on a miss)
    "warmup_eval_tokens",  # tokens llama.cpp evaluated while warming [A, B]
    "ttft_prefill_tokens",  # tokens evaluated in multi-token batches during the TTFT call
    "ttft_prefill_ms",  # llama.cpp's time for those batches
    "ttft_decode_tokens",  # single-token decodes during the TTFT call
    "ttft_decode_ms",
    "ttft_overhead_ms",  # ttft_ms not spent inside llama.cpp's evaluation
    "gen_prefill_tokens",  # the same four counters for the max_tokens generation
    "gen_prefill_ms",
    "gen_decode_tokens",
    "gen_decode_ms",
    "gen_overhead_ms",
    "decode_tok_s",  # gen_decode_tokens / gen_decode_ms: decoding alone
    "cache_verified",  # True when the TTFT call evaluated exactly tokens_recomputed
    "cache_note",  # why a row is not verified, empty otherwise
)

RESULT_COLUMNS: tuple[str, ...] = SEED_RESULT_COLUMNS + EXTRA_RESULT_COLUMNS

#: The seed's prompts CSV.
PROMPT_COLUMNS: tuple[str, ...] = ("prompt_name", "token_count", "prompt_text", "sample_output")
PROMPT_NAMES: tuple[str, ...] = ("warmup", "hit", "miss")

CONDITIONS: tuple[str, ...] = ("hit", "miss")
