"""One configuration's job: open the engine once, run every trial, write the outputs.

:func:`run_experiment` reads as the story of the job: open the engine the settings name,
refuse early when no trial could be verified, build the prompts, run the seed's trials
(:mod:`.trials`), then the cures this engine can measure (:mod:`.cures`,
:mod:`.server_cures`), and write everything (:mod:`.results`): to the final names, to
``unverified/`` when verification is required and some trial failed it, or to
``incomplete/`` when the engine broke off. Nothing here is timed (the timed calls live in
:mod:`kvcache_exp.measure.protocol`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kvcache_exp import provenance
from kvcache_exp.config.settings import ExperimentSettings, describe
from kvcache_exp.engines import Capability, Engine, EngineError, open_engine, verification_gap
from kvcache_exp.measure import cures, server_cures
from kvcache_exp.measure.cure_plan import PromptFactory
from kvcache_exp.measure.prompts import PromptSet, build_prompts, read_source_text
from kvcache_exp.measure.results import (
    INCOMPLETE,
    UNVERIFIED,
    ExperimentResult,
    Measured,
    Outputs,
)
from kvcache_exp.measure.trials import run_trials, warn_early_stops
from kvcache_exp.paths import ConfigurationFiles

log = logging.getLogger(__name__)


class CacheVerificationError(RuntimeError):
    """Some trials did not evaluate the tokens the design says they must."""


class IncompleteRunError(EngineError):
    """The engine failed mid-experiment; what was measured before is kept under
    ``incomplete/`` beside the results, and the message says where."""


def next_token(engine: Engine, tokens: list[int]) -> int:
    """The token the model generates after ``tokens`` (untimed; the cache is left empty)."""
    engine.clear()
    call = engine.first_token(tokens)
    call.run()
    token = call.result().tokens[0]
    engine.clear()
    return token


def prompt_factory(engine: Engine, settings: ExperimentSettings) -> PromptFactory:
    """Prompts of this configuration's sizes, built with the model's own tokenizer
    without BOS: variant t (of ``quality_prompts``) with a kept prefix of S tokens, Q
    avoiding a given first token. Variant 0 with S = ``keep_tokens`` is the seed's."""
    source = read_source_text(settings.prompt_text_file) if settings.prompt_text_file else None
    sizes = (settings.size_a, settings.size_b, settings.query_tokens)

    def build(variant: int, keep: int, avoid: int | None) -> PromptSet:
        return build_prompts(
            engine.tokenize,
            *sizes,
            source_text=source,
            size_s=keep,
            avoid_q_first=avoid,
            variant=variant,
            variants=settings.quality_prompts,
        )

    return build


def make_prompts(engine: Engine, settings: ExperimentSettings) -> PromptSet:
    """The seed's prompts (with ``keep_tokens`` of kept prefix S).

    A first draft tells us which token the model generates after ``[S, A, B]`` (by its
    id); Q is then chosen not to start with it, since a hit would otherwise reuse that
    one generated token and evaluate one token less.
    """
    build = prompt_factory(engine, settings)
    draft = build(0, settings.keep_tokens, None)
    following = next_token(engine, draft.warmup)
    if draft.q.tokens[0] == following:
        log.info("Q would start with the model's continuation of [A, B]; choosing another Q")
        return build(0, settings.keep_tokens, following)
    return draft


# The job's orchestration below decides no number of its own: it calls what the mutation
# tests cover (checks, prompts, protocol, cures) and is tested by running whole
# experiments (test_experiment.py, test_workflow.py), too slow to repeat per mutant.
# pragma: no mutate block
def measure_cures(engine: Engine, settings: ExperimentSettings, rows: list[dict[str, Any]]) -> None:
    """The cures this engine can measure, by the capabilities it declares: llama.cpp's
    cache surgery and full logits (the in-process cures), or llama-server's cache reuse
    (the hit, the miss and the reuse: :mod:`kvcache_exp.measure.server_cures`). An engine
    with neither (an OpenAI-compatible API) measures none: its cures table stays empty,
    with a warning. Rows go into ``rows`` as they are measured."""
    shared = {
        "keep_sizes": list(settings.cure_keep_tokens),
        "trials": settings.quality_prompts,
        "warmup_tokens": settings.warmup_tokens,
        "settle_s": settings.settle_ms / 1000.0,
        "quality_tokens": settings.quality_tokens,
        "seed": settings.seed,
        "rows": rows,
    }
    build = prompt_factory(engine, settings)
    if Capability.CACHE_SURGERY in engine.capabilities:
        cures.run_cures(
            engine,  # type: ignore[arg-type]  # the capability promises the calls
            build,
            recompute_shares=list(settings.recompute_shares),
            **shared,
        )
        return
    if Capability.SERVER_CACHE_REUSE not in engine.capabilities:
        log.warning(
            "cures: the %s engine has neither llama.cpp's cache operations nor "
            "llama-server's KV-shift reuse (the OpenAI API has no reuse and no slot "
            "control), so no cure is measured (the cures CSV has only its header); use "
            "api: llama_server with llama-server, or cures: false",
            engine.name,
        )
        return
    if settings.recompute_shares:
        log.info(
            "cures: shift + recompute r needs llama.cpp's cache operations, which a server "
            "does not expose; measuring the hit, the miss and llama-server's cache reuse"
        )
    server_cures.run_server_cures(
        engine,  # type: ignore[arg-type]  # the capability promises the calls
        build,
        cache_reuse=settings.server.cache_reuse,
        correction=engine.position_correction(),
        **shared,
    )


def job_record(
    model_path: Path,
    settings: ExperimentSettings,
    engine_info: dict[str, Any],
    started: tuple[str, float],
    finished: tuple[str, float],
) -> dict[str, Any]:
    """The provenance of one experiment job: what, where, when, with which code and build."""
    return {
        "configuration": settings.tag,
        **provenance.job_record(
            model_path, settings.as_dict(), settings.n_threads, engine_info, started, finished
        ),
    }


def require_verifiable(engine: Engine, settings: ExperimentSettings) -> None:
    """Stop before the first trial when no trial of this engine could be cache-verified
    (a server that reports no cached counts, or cannot clear its cache), unless the
    settings accept unverified timing."""
    gap = verification_gap(engine)
    if gap and settings.require_cache_verified:
        raise EngineError(
            f"no trial of this run could be cache-verified: {gap}. Set "
            "require_cache_verified: false to measure anyway (every row is then written "
            "with cache_verified false and the reason)"
        )
    if gap:
        log.warning("trials cannot be cache-verified (require_cache_verified is false): %s", gap)


def run_experiment(
    model_path: Path, settings: ExperimentSettings, files: ConfigurationFiles
) -> ExperimentResult:
    """Measure one configuration end to end and write its files (see the module's story).

    The seed's hit and miss trials come first, exactly as the seed ran them; then, when
    ``settings.cures`` is set, the cures. Nothing measured is lost: trials that fail
    verification are kept under ``unverified/``, a run the engine breaks off under
    ``incomplete/``, and the error names the folder.
    """
    started = provenance.now()
    log.info("configuration %s started: %s", settings.tag, describe(settings))
    log.info("loading %s", model_path)
    outputs = Outputs(files)
    engine = open_engine(model_path, settings)
    measured = Measured()
    engine_info: dict[str, Any] = {"engine": settings.engine}
    try:
        engine_info = engine.describe()
        require_verifiable(engine, settings)
        measured.prompts = prompts = make_prompts(engine, settings)
        log.info(
            "prompts: warmup=%d hit=%d miss=%d tokens",
            len(prompts.warmup),
            len(prompts.hit),
            len(prompts.miss),
        )
        run_trials(engine, prompts, settings, measured)
        if settings.cures:
            log.info("cures started")
            measure_cures(engine, settings, measured.cure_rows)
            log.info("cures finished")
    except EngineError as err:
        if not measured.anything:
            raise  # nothing measured: the engine's own message says it all
        record = job_record(model_path, settings, engine_info, started, provenance.now())
        partial = measured.result()
        side = outputs.write(partial, {**record, "error": str(err)}, aside=INCOMPLETE)
        failure = IncompleteRunError(
            f"the {settings.engine} engine failed mid-run: {err}\n"
            f"{len(partial.results)} trials and {len(partial.cures)} cure rows measured "
            f"before the failure were kept in {side.results.parent}; nothing was written to "
            f"{files.results}. Fix the cause and run again: the configuration is measured "
            "anew."
        )
        log.error("%s", failure)
        raise failure from err
    finally:
        engine.close()
    result = measured.result()
    warn_early_stops(result.results, settings.max_tokens)
    record = job_record(model_path, settings, engine_info, started, provenance.now())
    bad = result.unverified()
    if len(bad) and settings.require_cache_verified:
        side = outputs.write(result, record, aside=UNVERIFIED)
        first = bad.iloc[0]
        raise CacheVerificationError(
            f"{len(bad)} of {len(result.results) + len(result.cures)} trials did not evaluate "
            f"the tokens the design requires, e.g. {first['condition']} trial "
            f"{first['trial']}: {first['cache_note']}. The measurements were kept in "
            f"{side.results.parent}. Set require_cache_verified: false to accept them with a "
            "warning."
        )
    if len(bad):
        log.warning(
            "%d trials are not cache-verified (kept, as require_cache_verified is false; the "
            "summary leaves them out): %s",
            len(bad),
            bad.iloc[0]["cache_note"],
        )
    outputs.write(result, record)
    log.info("configuration %s finished: wrote %s", settings.tag, files)
    return result
