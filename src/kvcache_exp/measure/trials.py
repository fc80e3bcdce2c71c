"""The seed's trials: hit and miss, each from a freshly warmed cache, and their rows.

Each trial follows :func:`kvcache_exp.measure.protocol.run_trial` (clear, warm
``[A, B]``, settle, the one-token TTFT call, settle, the ``max_tokens`` generation); the
counts of every call are checked (:mod:`.checks`) and written beside its times in the
seed's results columns, then ours (:data:`kvcache_exp.columns.RESULT_COLUMNS`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pandas as pd

from kvcache_exp.columns import CONDITIONS
from kvcache_exp.config.settings import ExperimentSettings
from kvcache_exp.engines import Engine
from kvcache_exp.measure import protocol
from kvcache_exp.measure.checks import check_trial
from kvcache_exp.measure.prompts import PromptSet
from kvcache_exp.measure.results import Measured

log = logging.getLogger(__name__)


def _row(
    trial_no: int,
    condition: str,
    order: int,
    t: protocol.TrialMeasurement,
    prompt_tokens: int,
    settings: ExperimentSettings,
    expected: int,
    note: str,
) -> dict[str, Any]:
    gen = t.generation
    seconds = gen.wall_ms / 1000.0
    return {
        "trial": trial_no,
        "condition": condition,
        "warmup_time_ms": t.warmup.wall_ms,
        "ttft_ms": t.ttft.wall_ms,
        "total_time_ms": gen.wall_ms,
        "throughput_tok_s": gen.completion_tokens / seconds if seconds > 0 else math.nan,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "finish_reason": gen.finish_reason,
        "size_a": settings.size_a,
        "size_b": settings.size_b,
        "size_q": settings.query_tokens,
        "tokens_recomputed": expected,
        "warmup_eval_tokens": t.warmup.eval_tokens,
        "ttft_prefill_tokens": t.ttft.prefill_tokens,
        "ttft_prefill_ms": t.ttft.prefill_ms,
        "ttft_decode_tokens": t.ttft.decode_tokens,
        "ttft_decode_ms": t.ttft.decode_ms,
        "ttft_overhead_ms": t.ttft.overhead_ms,
        "gen_prefill_tokens": gen.prefill_tokens,
        "gen_prefill_ms": gen.prefill_ms,
        "gen_decode_tokens": gen.decode_tokens,
        "gen_decode_ms": gen.decode_ms,
        "gen_overhead_ms": gen.overhead_ms,
        "decode_tok_s": (
            gen.decode_tokens / gen.decode_ms * 1000.0 if gen.decode_ms > 0 else math.nan
        ),
        "cache_verified": note == "",
        "cache_note": note,
        "order": order,
        "cleared_pos_max": t.cleared_pos_max,
    }


def trial_order(trial_no: int) -> tuple[str, ...]:
    """The conditions of one trial in the order they run: hit first in odd trials, miss
    first in even ones, so that neither always follows the other."""
    return CONDITIONS if trial_no % 2 == 1 else tuple(reversed(CONDITIONS))


def run_trials(
    engine: Engine, prompts: PromptSet, settings: ExperimentSettings, measured: Measured
) -> None:
    """Run ``trials`` trials per condition, alternating which condition goes first.

    Each trial's row goes into ``measured`` (and the first trial's outputs into its
    samples) as soon as it is measured, so that the caller keeps them when the engine
    fails half-way.
    """
    expected = {"hit": len(prompts.q.tokens), "miss": len(prompts.miss) - len(prompts.s.tokens)}
    cached = {"hit": len(prompts.warmup), "miss": len(prompts.s.tokens)}
    rows, samples = measured.rows, measured.samples
    for trial_no in range(1, settings.trials + 1):
        for order, condition in enumerate(trial_order(trial_no), start=1):
            prompt = prompts.tokens(condition)
            trial = protocol.run_trial(
                engine,
                prompts.warmup,
                prompt,
                warmup_tokens=settings.warmup_tokens,
                max_tokens=settings.max_tokens,
                settle_s=settings.settle_ms / 1000.0,
            )
            note = check_trial(
                trial,
                expected[condition],
                len(prompts.warmup),
                settings.max_tokens,
                cached[condition],
            )
            rows.append(
                _row(
                    trial_no,
                    condition,
                    order,
                    trial,
                    len(prompt),
                    settings,
                    expected[condition],
                    note,
                )
            )
            if trial_no == 1:
                samples.setdefault("warmup", engine.detokenize(trial.warmup.result.tokens))
                samples[condition] = engine.detokenize(trial.generation.result.tokens)
            gen = trial.generation
            log.info(
                "trial %d %-4s ttft=%.1f ms total=%.1f ms completion_tokens=%d "
                "finish_reason=%s ttft_eval_tokens=%d%s",
                trial_no,
                condition,
                trial.ttft.wall_ms,
                gen.wall_ms,
                gen.completion_tokens,
                gen.finish_reason,
                trial.ttft.eval_tokens,
                f" UNVERIFIED: {note}" if note else "",
            )


def warn_early_stops(results: pd.DataFrame, max_tokens: int) -> int:
    """Log a warning when generations stopped at EOS before ``max_tokens``, as the seed does."""
    early = results[results["completion_tokens"] < max_tokens]
    if len(early):
        log.warning(
            "%d of %d trials stopped early at EOS (completion_tokens < max_tokens=%d): %s",
            len(early),
            len(results),
            max_tokens,
            ", ".join(
                f"{r.condition} trial {r.trial}: {r.completion_tokens} tokens, "
                f"finish_reason={r.finish_reason}"
                for r in early.itertuples()
            ),
        )
    return len(early)
