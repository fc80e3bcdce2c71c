"""One experiment configuration: load the model once, run every trial, write the CSVs.

Everything here happens outside the timed regions (those live in
:mod:`kvcache_exp.measure.protocol`): building prompts, logging each trial, checking
that the cache behaved as designed, and writing the seed's two CSVs and the job's
provenance record.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from kvcache_exp import provenance
from kvcache_exp.columns import (
    CONDITIONS,
    CURE_COLUMNS,
    PROMPT_COLUMNS,
    PROMPT_NAMES,
    RESULT_COLUMNS,
)
from kvcache_exp.config.settings import ExperimentSettings, describe
from kvcache_exp.engines import Capability, Engine, EngineError, open_engine, verification_gap
from kvcache_exp.measure import cures, protocol, server_cures
from kvcache_exp.measure.prompts import PromptSet, build_prompts, read_source_text
from kvcache_exp.models.files import describe_model
from kvcache_exp.outputs import write_csv

log = logging.getLogger(__name__)


class CacheVerificationError(RuntimeError):
    """Some trials did not evaluate the tokens the design says they must."""


class IncompleteRunError(EngineError):
    """The engine failed mid-experiment; what was measured before is kept under
    ``incomplete/`` beside the results, and the message says where."""


@dataclass(frozen=True)
class ExperimentResult:
    results: pd.DataFrame
    prompts: pd.DataFrame
    cures: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CURE_COLUMNS)))


def next_token(engine: Engine, tokens: list[int]) -> int:
    """The token the model generates after ``tokens`` (untimed; the cache is left empty)."""
    engine.clear()
    call = engine.first_token(tokens)
    call.run()
    token = call.result().tokens[0]
    engine.clear()
    return token


def make_prompts(engine: Engine, settings: ExperimentSettings) -> PromptSet:
    """Build the prompts with the model's own tokenizer, without BOS.

    A first draft of the prompts tells us which token the model generates after
    ``[A, B]`` (by its id); Q is then chosen not to start with it, since a hit would
    otherwise reuse that one generated token and evaluate one token less.
    """
    source = read_source_text(settings.prompt_text_file) if settings.prompt_text_file else None
    sizes = (settings.size_a, settings.size_b, settings.query_tokens)
    extra = {"source_text": source, "size_s": settings.keep_tokens}
    draft = build_prompts(engine.tokenize, *sizes, **extra)
    following = next_token(engine, draft.warmup)
    if draft.q.tokens[0] == following:
        log.info("Q would start with the model's continuation of [A, B]; choosing another Q")
        return build_prompts(engine.tokenize, *sizes, **extra, avoid_q_first=following)
    return draft


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
    engine: Engine,
    prompts: PromptSet,
    settings: ExperimentSettings,
    rows: list[dict[str, Any]] | None = None,
    samples: dict[str, str] | None = None,
) -> ExperimentResult:
    """Run ``trials`` trials per condition, alternating which condition goes first.

    Each trial's row is appended to ``rows`` (and the first trial's outputs to
    ``samples``) as soon as it is measured, so that a caller keeps them when the engine
    fails half-way.
    """
    expected = {"hit": len(prompts.q.tokens), "miss": len(prompts.miss) - len(prompts.s.tokens)}
    cached = {"hit": len(prompts.warmup), "miss": len(prompts.s.tokens)}
    rows = [] if rows is None else rows
    samples = {} if samples is None else samples
    for trial_no in range(1, settings.trials + 1):
        for order, condition in enumerate(trial_order(trial_no), start=1):
            prompt = prompts.tokens(condition)
            measured = protocol.run_trial(
                engine,
                prompts.warmup,
                prompt,
                warmup_tokens=settings.warmup_tokens,
                max_tokens=settings.max_tokens,
                settle_s=settings.settle_ms / 1000.0,
            )
            note = check_trial(
                measured,
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
                    measured,
                    len(prompt),
                    settings,
                    expected[condition],
                    note,
                )
            )
            if trial_no == 1:
                samples.setdefault("warmup", engine.detokenize(measured.warmup.result.tokens))
                samples[condition] = engine.detokenize(measured.generation.result.tokens)
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
    return _result(rows, prompts, samples)


def _result(
    rows: list[dict[str, Any]], prompts: PromptSet, samples: dict[str, str]
) -> ExperimentResult:
    """The results and prompts tables of the trials measured so far."""
    results = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    results = results.sort_values(["trial", "order"], kind="stable", ignore_index=True)
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


def measure_cures(
    engine: Engine,
    prompts: PromptSet,
    settings: ExperimentSettings,
    rows: list[dict[str, Any]],
) -> pd.DataFrame:
    """The cures this engine can measure, by the capabilities it declares: llama.cpp's
    cache surgery and full logits (the in-process cures), or llama-server's cache reuse
    (the hit, the miss and the reuse: :mod:`kvcache_exp.measure.server_cures`). An engine
    with neither (an OpenAI-compatible API) measures none: its cures table stays empty,
    with a warning."""
    if Capability.CACHE_SURGERY in engine.capabilities:
        return cures.run_cures(
            engine,  # type: ignore[arg-type]  # the capability promises the calls
            prompts,
            trials=settings.trials,
            warmup_tokens=settings.warmup_tokens,
            settle_s=settings.settle_ms / 1000.0,
            recompute_shares=list(settings.recompute_shares),
            quality_tokens=settings.quality_tokens,
            rows=rows,
        )
    if Capability.SERVER_CACHE_REUSE not in engine.capabilities:
        log.warning(
            "cures: the %s engine has neither llama.cpp's cache operations nor "
            "llama-server's KV-shift reuse (the OpenAI API has no reuse and no slot "
            "control), so no cure is measured (the cures CSV has only its header); use "
            "api: llama_server with llama-server, or cures: false",
            engine.name,
        )
        return pd.DataFrame(columns=list(CURE_COLUMNS))
    if settings.recompute_shares:
        log.info(
            "cures: shift + recompute r needs llama.cpp's cache operations, which a server "
            "does not expose; measuring the hit, the miss and llama-server's cache reuse"
        )
    return server_cures.run_server_cures(
        engine,  # type: ignore[arg-type]  # the capability promises the calls
        prompts,
        trials=settings.trials,
        warmup_tokens=settings.warmup_tokens,
        settle_s=settings.settle_ms / 1000.0,
        quality_tokens=settings.quality_tokens,
        cache_reuse=settings.server.cache_reuse,
        correction=engine.position_correction(),
        rows=rows,
    )


def keep_incomplete(
    error: EngineError,
    engine_name: str,
    partial: ExperimentResult,
    record: dict[str, Any],
    results_csv: Path,
    prompts_csv: Path,
    record_json: Path | None,
    cures_csv: Path | None,
) -> IncompleteRunError:
    """Write what was measured before the engine failed under ``incomplete/`` (beside
    the results, like ``unverified/``) and return the one error to raise."""
    side = results_csv.parent / "incomplete"
    write_csv(partial.results, side / results_csv.name)
    write_csv(partial.prompts, side / prompts_csv.name)
    written = [side / results_csv.name, side / prompts_csv.name]
    if cures_csv is not None:
        write_csv(partial.cures, side / cures_csv.name)
        written.append(side / cures_csv.name)
    if record_json is not None:
        provenance.write_json(side / record_json.name, {**record, "error": str(error)})
        written.append(side / record_json.name)
    return IncompleteRunError(
        f"the {engine_name} engine failed mid-experiment: {error}\n"
        f"{len(partial.results)} trials and {len(partial.cures)} cure rows measured before the "
        f"failure were kept in {side} ({', '.join(p.name for p in written)}); nothing was "
        f"written to {results_csv}. Fix the cause and run again: the experiment is "
        "measured anew."
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


def job_record(
    model_path: Path,
    settings: ExperimentSettings,
    engine_info: dict[str, Any],
    started: tuple[str, float],
    finished: tuple[str, float],
) -> dict[str, Any]:
    """The provenance of one experiment job: what, where, when, with which code and build."""
    where = provenance.machine()
    return {
        "label": settings.label,
        "host": where["host"],
        "slurm_job_id": where["slurm_job_id"],
        "n_threads": settings.n_threads,
        "started_at": started[0],
        "finished_at": finished[0],
        "start_unix": started[1],
        "end_unix": finished[1],
        "settings": settings.as_dict(),
        "machine": where,
        "engine": engine_info,
        "model": describe_model(model_path) if model_path.is_file() else {"path": str(model_path)},
        "code": provenance.code_version(),
    }


def run_experiment(
    model_path: Path,
    settings: ExperimentSettings,
    results_csv: Path,
    prompts_csv: Path,
    record_json: Path | None = None,
    cures_csv: Path | None = None,
) -> ExperimentResult:
    """Run one configuration end to end and write its CSVs and its provenance record.

    The seed's hit and miss trials come first, exactly as the seed ran them; then, when
    ``settings.cures`` is set, the cures (:mod:`kvcache_exp.measure.cures`).

    When some trials fail the cache check and ``require_cache_verified`` is set, the
    measurements are still written (beside the results, under ``unverified/``) so that
    nothing measured is lost, and then the run fails with the reason.
    """
    started = provenance.now()
    log.info("experiment %s started: %s", settings.label, describe(settings))
    log.info("loading %s", model_path)
    engine = open_engine(model_path, settings)
    rows: list[dict[str, Any]] = []
    samples: dict[str, str] = {}
    cure_rows: list[dict[str, Any]] = []
    prompts: PromptSet | None = None
    engine_info: dict[str, Any] = {"engine": settings.engine}
    try:
        engine_info = engine.describe()
        gap = verification_gap(engine)
        if gap and settings.require_cache_verified:
            raise EngineError(
                f"no trial of this run could be cache-verified: {gap}. Set "
                "require_cache_verified: false to measure anyway (every row is then written "
                "with cache_verified false and the reason)"
            )
        if gap:
            log.warning(
                "trials cannot be cache-verified (require_cache_verified is false): %s", gap
            )
        prompts = make_prompts(engine, settings)
        log.info(
            "prompts: warmup=%d hit=%d miss=%d tokens",
            len(prompts.warmup),
            len(prompts.hit),
            len(prompts.miss),
        )
        result = run_trials(engine, prompts, settings, rows, samples)
        if settings.cures:
            log.info("cures started")
            found = measure_cures(engine, prompts, settings, cure_rows)
            log.info("cures finished")
            result = replace(result, cures=found)
    except EngineError as err:
        if prompts is None or not (rows or cure_rows):
            raise  # nothing measured: the engine's own message says it all
        partial = replace(
            _result(rows, prompts, samples),
            cures=pd.DataFrame(cure_rows, columns=list(CURE_COLUMNS)),
        )
        record = job_record(model_path, settings, engine_info, started, provenance.now())
        failure = keep_incomplete(
            err, settings.engine, partial, record, results_csv, prompts_csv, record_json,
            cures_csv,
        )  # fmt: skip
        log.error("%s", failure)
        raise failure from err
    finally:
        engine.close()
    warn_early_stops(result.results, settings.max_tokens)
    record = job_record(model_path, settings, engine_info, started, provenance.now())
    checked = pd.concat(
        [
            result.results[["condition", "trial", "cache_verified", "cache_note"]],
            result.cures.rename(columns={"cure": "condition"})[
                ["condition", "trial", "cache_verified", "cache_note"]
            ],
        ],
        ignore_index=True,
    )
    bad = checked[~checked["cache_verified"].astype(bool)]
    if len(bad) and settings.require_cache_verified:
        side = results_csv.parent / "unverified"
        write_csv(result.results, side / results_csv.name)
        write_csv(result.prompts, side / prompts_csv.name)
        if cures_csv is not None:
            write_csv(result.cures, side / cures_csv.name)
        if record_json is not None:
            provenance.write_json(side / record_json.name, record)
        raise CacheVerificationError(
            f"{len(bad)} of {len(checked)} trials did not evaluate the tokens the "
            f"design requires, e.g. {bad.iloc[0]['condition']} trial {bad.iloc[0]['trial']}: "
            f"{bad.iloc[0]['cache_note']}. The measurements were kept in {side}. Set "
            "require_cache_verified: false to accept them with a warning."
        )
    if len(bad):
        log.warning(
            "%d trials are not cache-verified (kept, as require_cache_verified is false; the "
            "summary leaves them out): %s",
            len(bad),
            bad.iloc[0]["cache_note"],
        )
    write_csv(result.results, results_csv)
    write_csv(result.prompts, prompts_csv)
    if cures_csv is not None:
        write_csv(result.cures, cures_csv)
    if record_json is not None:
        provenance.write_json(record_json, record)
    log.info("experiment %s finished: wrote %s and %s", settings.label, results_csv, prompts_csv)
    return result
