"""One experiment configuration: load the model once, run every trial, write the CSVs.

Everything here happens outside the timed regions (those live in
:mod:`kvcache_exp.protocol`): building prompts, logging each trial, checking that the
cache behaved as designed, and writing the two CSVs of the seed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import pandas as pd

from kvcache_exp import protocol
from kvcache_exp.columns import CONDITIONS, PROMPT_COLUMNS, PROMPT_NAMES, RESULT_COLUMNS
from kvcache_exp.models import ModelError
from kvcache_exp.outputs import write_csv
from kvcache_exp.prompts import PromptSet, build_prompts, read_source_text
from kvcache_exp.settings import ExperimentSettings, describe

log = logging.getLogger(__name__)


class CacheVerificationError(RuntimeError):
    """Some trials did not evaluate the tokens the design says they must."""


@dataclass(frozen=True)
class ExperimentResult:
    results: pd.DataFrame
    prompts: pd.DataFrame


def load_model(model_path: Path, settings: ExperimentSettings) -> llama_cpp.Llama:
    """Load the model once per job, with the context and offload the settings ask for.

    ``verbose=False`` matters: verbose mode resets llama.cpp's counters behind our back.
    """
    try:
        return _llama(model_path, settings)
    except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
        size = model_path.stat().st_size if model_path.exists() else 0
        raise ModelError(
            f"llama.cpp could not load {model_path} ({size} bytes): {exc}. The file may be "
            "truncated or corrupt: delete it and fetch it again (catalog models are fetched "
            "by the workflow), or check that it is a model llama.cpp supports"
        ) from exc


def _llama(model_path: Path, settings: ExperimentSettings) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        model_path=str(model_path),
        n_ctx=settings.n_ctx,
        n_batch=settings.n_batch,
        n_gpu_layers=settings.n_gpu_layers,
        n_threads=settings.n_threads,
        n_threads_batch=settings.n_threads,
        seed=settings.seed,
        verbose=False,
    )


def make_prompts(llm: llama_cpp.Llama, settings: ExperimentSettings) -> PromptSet:
    """Build the prompts with the model's own tokenizer, without BOS.

    A first draft of the prompts tells us which token the model generates after
    ``[A, B]`` (one untimed generation); Q is then chosen not to start with it, since a
    hit would otherwise reuse that one generated token and evaluate one token less.
    """

    def tokenize(text: str) -> list[int]:
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    source = read_source_text(settings.prompt_text_file) if settings.prompt_text_file else None
    sizes = (settings.size_a, settings.size_b, settings.query_tokens)
    draft = build_prompts(tokenize, *sizes, source_text=source)
    protocol.clear_kv_cache(llm)
    probe = llm.create_completion(draft.warmup, max_tokens=1, seed=settings.seed, **protocol.GREEDY)
    next_text = probe["choices"][0]["text"]
    next_tokens = tokenize(next_text) if next_text else []
    protocol.clear_kv_cache(llm)
    if next_tokens and next_tokens[0] == draft.q.tokens[0]:
        log.info("Q would start with the model's continuation of [A, B]; choosing another Q")
        return build_prompts(tokenize, *sizes, source_text=source, avoid_q_first=next_tokens[0])
    return draft


def evaluated_by_generation(prompt_tokens: int, call: protocol.CallMeasurement) -> int:
    """Tokens a generation from an empty cache must evaluate: the prompt, then each
    generated token before the next is sampled (all of them when EOS ended it, all but
    the last when max_tokens did)."""
    generated = call.completion_tokens - (1 if call.finish_reason == "length" else 0)
    return prompt_tokens + max(generated, 0)


def _check_cache(
    condition: str, trial: protocol.TrialMeasurement, expected: int, warmup_prompt: int
) -> str:
    """Why a trial's evaluation counts contradict the design, or '' when they agree."""
    notes = []
    warmup_expected = evaluated_by_generation(warmup_prompt, trial.warmup)
    if trial.warmup.eval_tokens != warmup_expected:
        notes.append(
            f"warm-up evaluated {trial.warmup.eval_tokens} tokens, expected "
            f"{warmup_expected}: the cache was not empty"
        )
    if trial.ttft.eval_tokens != expected:
        notes.append(
            f"TTFT call of a {condition} evaluated {trial.ttft.eval_tokens} tokens, "
            f"expected {expected}"
        )
    return "; ".join(notes)


def _row(
    trial_no: int,
    condition: str,
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
    }


def run_trials(
    llm: llama_cpp.Llama, prompts: PromptSet, settings: ExperimentSettings
) -> ExperimentResult:
    """Run ``trials`` trials per condition, conditions back to back, as the seed does."""
    expected = {"hit": len(prompts.q.tokens), "miss": len(prompts.miss)}
    rows: list[dict[str, Any]] = []
    samples: dict[str, str] = {}
    for trial_no in range(1, settings.trials + 1):
        for condition in CONDITIONS:
            prompt = prompts.tokens(condition)
            measured = protocol.run_trial(
                llm,
                prompts.warmup,
                prompt,
                warmup_tokens=settings.warmup_tokens,
                max_tokens=settings.max_tokens,
                settle_s=settings.settle_ms / 1000.0,
                seed=settings.seed,
            )
            note = _check_cache(condition, measured, expected[condition], len(prompts.warmup))
            rows.append(
                _row(
                    trial_no, condition, measured, len(prompt), settings, expected[condition], note
                )
            )
            if trial_no == 1:
                samples.setdefault("warmup", measured.warmup.text)
                samples[condition] = measured.generation.text
            gen = measured.generation
            log.info(
                "trial %d %-4s ttft=%.1f ms total=%.1f ms completion_tokens=%d "
                "finish_reason=%s ttft_eval_tokens=%d%s",
                trial_no,
                condition,
                measured.ttft.wall_ms,
                gen.wall_ms,
                gen.completion_tokens,
                gen.finish_reason,
                measured.ttft.eval_tokens,
                f" UNVERIFIED: {note}" if note else "",
            )
    results = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    prompt_rows = [
        {
            "prompt_name": name,
            "token_count": len(prompts.tokens(name)),
            "prompt_text": prompts.text(name),
            "sample_output": samples.get(name, ""),
        }
        for name in PROMPT_NAMES
    ]
    return ExperimentResult(
        results=results, prompts=pd.DataFrame(prompt_rows, columns=list(PROMPT_COLUMNS))
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


def run_experiment(
    model_path: Path, settings: ExperimentSettings, results_csv: Path, prompts_csv: Path
) -> ExperimentResult:
    """Run one configuration end to end and write its two CSVs.

    When some trials fail the cache check and ``require_cache_verified`` is set, the
    measurements are still written (beside the results, under ``unverified/``) so that
    nothing measured is lost, and then the run fails with the reason.
    """
    log.info("experiment %s started: %s", settings.label, describe(settings))
    log.info("loading %s", model_path)
    llm = load_model(model_path, settings)
    try:
        prompts = make_prompts(llm, settings)
        log.info(
            "prompts: warmup=%d hit=%d miss=%d tokens",
            len(prompts.warmup),
            len(prompts.hit),
            len(prompts.miss),
        )
        result = run_trials(llm, prompts, settings)
    finally:
        llm.close()
    warn_early_stops(result.results, settings.max_tokens)
    bad = result.results[~result.results["cache_verified"].astype(bool)]
    if len(bad) and settings.require_cache_verified:
        side = results_csv.parent / "unverified"
        write_csv(result.results, side / results_csv.name)
        write_csv(result.prompts, side / prompts_csv.name)
        raise CacheVerificationError(
            f"{len(bad)} of {len(result.results)} trials did not evaluate the tokens the "
            f"design requires, e.g. {bad.iloc[0]['condition']} trial {bad.iloc[0]['trial']}: "
            f"{bad.iloc[0]['cache_note']}. The measurements were kept in {side}. Set "
            "require_cache_verified: false to accept them with a warning."
        )
    if len(bad):
        log.warning(
            "%d trials are not cache-verified (kept, as require_cache_verified is false): %s",
            len(bad),
            bad.iloc[0]["cache_note"],
        )
    write_csv(result.results, results_csv)
    write_csv(result.prompts, prompts_csv)
    log.info("experiment %s finished: wrote %s and %s", settings.label, results_csv, prompts_csv)
    return result
