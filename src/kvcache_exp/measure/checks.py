"""The checks that prove each timed call did what the design says, from the engine's own
counts: the evidence behind every ``cache_verified`` and ``cache_note``.

A trial whose TTFT call reused fewer (or more) cached tokens than its condition allows
measures something else than it claims: a "miss" that silently reused the cache, a
"hit" that recomputed. These functions say why a measurement contradicts the design,
or return '' when it agrees; the callers write the reason beside the numbers, and a
trial with a reason never enters a statistic.
"""

from __future__ import annotations

from kvcache_exp.measure import protocol


def evaluated_by_generation(prompt_tokens: int, call: protocol.CallMeasurement) -> int:
    """Tokens a generation from an empty cache must evaluate: the prompt, then each
    generated token before the next is sampled (all of them when EOS ended it, all but
    the last when max_tokens did)."""
    generated = call.completion_tokens - (1 if call.finish_reason == "length" else 0)
    return prompt_tokens + max(generated, 0)


def check_trial(
    trial: protocol.TrialMeasurement,
    expected_ttft: int,
    warmup_prompt: int,
    max_tokens: int,
    expected_cached: int | None = None,
) -> str:
    """Why a trial's counts contradict the design, or '' when they agree.

    Checked: the cache was empty after clearing (its highest position is -1, or, where
    the engine cannot show it, the warm-up reused no cached token), the
    warm-up evaluated all of ``[A, B]`` and its generated tokens, the TTFT call
    evaluated exactly the tokens the condition must recompute and sampled exactly one
    token, and the generation reused the cached prompt and produced at most ``max_tokens``
    tokens. Where the engine
    says how many prompt tokens it reused (a server always does), the warm-up must have
    reused none and the TTFT call ``expected_cached``: a server that restored a prefix
    from elsewhere (llama-server's host-memory cache) is caught here.
    """
    notes = []
    if trial.cleared_pos_max not in (None, -1):
        notes.append(
            f"the cache was not empty after clearing (highest position {trial.cleared_pos_max})"
        )
    warm_cached = trial.warmup.result.cached_tokens
    if warm_cached not in (None, 0):
        notes.append(f"the warm-up reused {warm_cached} cached tokens after clearing, expected 0")
    if trial.cleared_pos_max is None and warm_cached is None:
        notes.append(
            "nothing shows the cache was empty: the engine reports neither its "
            "positions nor the warm-up's reused tokens"
        )
    ttft_cached = trial.ttft.result.cached_tokens
    if expected_cached is not None and ttft_cached is not None and ttft_cached != expected_cached:
        notes.append(f"TTFT call reused {ttft_cached} cached tokens, expected {expected_cached}")
    warmup_expected = evaluated_by_generation(warmup_prompt, trial.warmup)
    if trial.warmup.eval_tokens != warmup_expected:
        notes.append(
            f"warm-up evaluated {trial.warmup.eval_tokens} tokens, expected {warmup_expected}"
        )
    if trial.ttft.eval_tokens != expected_ttft:
        notes.append(
            f"TTFT call evaluated {trial.ttft.eval_tokens} tokens, expected {expected_ttft}"
        )
    if trial.ttft.completion_tokens != 1:
        notes.append(f"TTFT call sampled {trial.ttft.completion_tokens} tokens, expected 1")
    if trial.generation.completion_tokens > max_tokens:
        notes.append(
            f"generation produced {trial.generation.completion_tokens} tokens, more than "
            f"max_tokens={max_tokens}"
        )
    # The generation repeats the TTFT call's prompt, which the cache now holds: it may
    # evaluate the last prompt token again for its logits (a server does), never more.
    reevaluated = trial.generation.eval_tokens - evaluated_by_generation(0, trial.generation)
    if reevaluated > 1:
        notes.append(
            f"generation evaluated {reevaluated} of its prompt's tokens again, expected at "
            "most 1 (the prompt was cached by the TTFT call)"
        )
    return "; ".join(notes)


def check_server_cure(
    measured: protocol.CallMeasurement,
    expected_eval: int,
    expected_cached: int,
    warm: protocol.CallMeasurement,
    warm_prompt: int,
    prompt: int,
) -> str:
    """Why a server cure trial's counts contradict the design, or '' when they agree.

    A server shows no cache positions, so its own counts are the proof: the warm-up of
    ``warm_prompt`` tokens found nothing cached after clearing and evaluated them all,
    the timed call reused ``expected_cached`` tokens and evaluated ``expected_eval``,
    sampled one token, and the server holds the whole prompt after it."""
    warm_expected = evaluated_by_generation(warm_prompt, warm)
    notes = []
    if warm.result.cached_tokens != 0:
        notes.append(f"the warm-up found {warm.result.cached_tokens} tokens cached after clearing")
    if warm.eval_tokens != warm_expected:
        notes.append(f"the warm-up evaluated {warm.eval_tokens} tokens, expected {warm_expected}")
    if measured.eval_tokens != expected_eval:
        notes.append(f"the call evaluated {measured.eval_tokens} tokens, expected {expected_eval}")
    if measured.result.cached_tokens != expected_cached:
        notes.append(
            f"the server reused {measured.result.cached_tokens} cached tokens, expected "
            f"{expected_cached}"
        )
    if measured.completion_tokens != 1:
        notes.append(f"the call sampled {measured.completion_tokens} tokens, expected 1")
    held = measured.result.extra.get("tokens_cached")
    if held is not None and held != prompt:
        notes.append(f"the server holds {held} tokens after the call, expected {prompt}")
    return "; ".join(notes)


def _cells(positions: list[int] | None, expected: int) -> str:
    """Why a sequence's cells are not exactly one at each position 0..expected-1, or ''."""
    if positions is None:
        return "the cache's cells could not be read from llama.cpp's state"
    if sorted(positions) == list(range(expected)):
        return ""
    doubled = len(positions) - len(set(positions))
    extra = f", {doubled} positions held twice" if doubled else ""
    span = f"{min(positions)}..{max(positions)}" if positions else "none"
    return (
        f"the cache holds {len(positions)} cells at positions {span}{extra}, expected "
        f"{expected} cells at 0..{expected - 1}"
    )


def check_cure(
    measured: protocol.CallMeasurement,
    expected: int,
    *,
    restored: int,
    warm_held: int,
    pos_min: int,
    positions: list[int] | None,
    prompt: int,
) -> str:
    """Why an in-process cure trial contradicts the design, or '' when it agrees.

    Its counts are not enough: a shift that moved nothing still evaluates |Q| tokens
    after the highest position. So besides the restored snapshot (``warm_held`` tokens)
    and the tokens evaluated and sampled, the cache after the call must hold exactly the
    ``prompt`` tokens: its lowest position 0, one cell at each position 0..prompt-1
    (read from llama.cpp's own state), and every cell removal llama.cpp was asked for
    done.
    """
    notes = []
    if restored != warm_held - 1:
        notes.append(f"the restored cache ends at position {restored}, expected {warm_held - 1}")
    if measured.eval_tokens != expected:
        notes.append(f"the call evaluated {measured.eval_tokens} tokens, expected {expected}")
    if measured.completion_tokens != 1:
        notes.append(f"the call sampled {measured.completion_tokens} tokens, expected 1")
    if not measured.result.extra.get("removals_done", True):
        notes.append("llama.cpp refused a cell removal the cure asked for")
    if pos_min != 0:
        notes.append(f"the cache's lowest position is {pos_min} after the call, expected 0")
    if cells := _cells(positions, prompt):
        notes.append(cells)
    return "; ".join(notes)


def check_cached_vs_full(pos_min: int, positions: list[int] | None, tokens: int) -> str:
    """Why the full recompute of the ``cached_vs_full`` row did not hold all of its
    ``tokens`` at positions 0.. (one pass from an empty cache), or ''."""
    notes = [] if pos_min == 0 else [f"its lowest position is {pos_min}, expected 0"]
    if cells := _cells(positions, tokens):
        notes.append(cells)
    return "; ".join(notes)
