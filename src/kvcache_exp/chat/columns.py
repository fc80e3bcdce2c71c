"""The columns of a replay's CSV (``results/conversations/{set}/{policy}-{cache}.csv``):
one row per turn of every conversation of the set, in this order."""

from __future__ import annotations

TURN_COLUMNS: tuple[str, ...] = (
    "set",  # the conversation set (builtin, a file's stem, or a shard: chats.2)
    "conversation",  # the conversation's id
    "source_line",  # its line in the conversation file (0: generated)
    "policy",  # the truncation policy's label
    "cache",  # the cache behaviour: prefix, shift or server_reuse
    "replies",  # live (generated) or recorded (the file's)
    "render",  # client (rendered and tokenized here) or server (by llama-server)
    "turn",  # 1, 2, ... within the conversation
    "turns_dropped",  # completed turns the policy leaves out of this prompt
    "tokens_discarded",  # tokens context_shift has discarded so far
    "removed",  # whether the policy removed something this turn
    "prompt_tokens",  # tokens of the prompt
    "held_tokens",  # tokens the cache held before the call (previous prompt + reply)
    "expected_cached",  # prompt tokens the cache behaviour must reuse (at least, for server_reuse)
    "cached_tokens",  # prompt tokens the engine says it reused (its own counter)
    "evaluated_tokens",  # tokens the engine evaluated in the timed call (its counters)
    "removed_start",  # the cache positions a shift removed, [start, end) (-1: none)
    "removed_end",
    "shifts",  # the most shifts any cached cell of the prompt has undergone
    "ttft_ms",  # the timed one-token call: evaluate what is not reused, sample one token
    "prefill_ms",  # the engine's own time for the evaluation
    "overhead_ms",  # ttft_ms not spent in the engine's evaluation
    "reply_tokens",  # tokens of the reply (generated, or the recorded reply's)
    "finish_reason",  # stop or length (live); recorded
    "decode_tokens",  # tokens the generation decoded one at a time
    "decode_ms",
    "decode_tok_s",  # decode_tokens / decode_ms
    "generation_ms",  # wall time of the reply's generation (untimed in the protocol's sense)
    "tripwire_index",  # first index where the prompt leaves the cached tokens (-1: none)
    "tripwire_cause",  # none, truncation, template or tokenization
    "tripwire_before",  # the text before that index
    "tripwire_cached",  # the text after it in the cache
    "tripwire_prompt",  # the text after it in the new prompt
    "kl_mean",  # next-token KL(full recompute || shifted cache) over the reply's first tokens
    "kl_p99",  # empty below 100 positions (it would be the largest)
    "kl_max",
    "top1_agreement",
    "rms_dp",
    "first_divergence",
    "quality_positions",  # positions compared (empty: no quality measured this turn)
    "render_ms",  # the replay's own work for the turn, outside the timed call: rendering,
    "tokenize_ms",  # tokenizing,
    "compare_ms",  # and comparing prompts and cache (policy, tripwire, shift span)
    "cache_verified",  # whether every count agrees with what the cache must have done
    "cache_note",  # why not, empty otherwise
)

#: Columns read as text (the rest are numbers).
TEXT_COLUMNS = frozenset(
    {
        "set",
        "conversation",
        "policy",
        "cache",
        "replies",
        "render",
        "finish_reason",
        "tripwire_cause",
        "tripwire_before",
        "tripwire_cached",
        "tripwire_prompt",
        "cache_note",
    }
)

#: The cache behaviours.
PREFIX, SHIFT, SERVER_REUSE = "prefix", "shift", "server_reuse"
CACHE_BEHAVIOURS: tuple[str, ...] = (PREFIX, SHIFT, SERVER_REUSE)
