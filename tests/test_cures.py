"""The cures, run by the package's own code on tiny checkpoints the tests make.

A one-layer RoPE model is the case where a shift is exact: layer 0's keys and values of
B depend only on B's tokens and positions, and the shift re-rotates the keys to their
new positions, so the cure must give the full recompute's distributions within float
tolerance. With two layers, B's states in layer 1 attended to A, so the shift must
differ measurably; GPT-2's absolute position embeddings cannot be corrected at all. And a
shift that does not move B, whatever its counts say, must leave its rows unverified.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import engine_threads
from gpt2_tiny import CORPUS, build_vocab, train_merges
from llama_tiny import make_tiny_gpt2_gguf, make_tiny_llama, tiny_tokenizer

from kvcache_exp.columns import CURE_COLUMNS
from kvcache_exp.engines.base import EngineSettings
from kvcache_exp.engines.llama_cpp_python import LlamaCppPython
from kvcache_exp.measure import cures, quality
from kvcache_exp.measure.prompts import build_prompts

SHARES = [0.25, 0.5]
TRIALS = 2


def _engine(path: Path, cache_type: str = "f32") -> LlamaCppPython:
    settings = EngineSettings(
        n_ctx=1024,
        n_batch=512,
        n_threads=engine_threads(2),
        n_gpu_layers=0,
        seed=1,
        cache_type_k=cache_type,
        cache_type_v=cache_type,
    )
    return LlamaCppPython(path, settings)


SETTLE_S = 0.001


def _run(path: Path, keeps: tuple[int, ...] = (0,), cache_type: str = "f32"):
    """Every cure at each kept prefix, on TRIALS prompts: (the prompt factory, the rows).

    It also checks what every run must do: trial t of each kept prefix on prompt t - 1 of
    the factory, and one settling pause per trial, just before its first cure."""
    engine = _engine(path, cache_type)
    rows: list[dict] = []
    asked: list[tuple[int, int]] = []
    pauses: list[tuple[float, int]] = []

    def prompt_for(variant: int, keep: int, avoid: int | None):
        if avoid is None:
            asked.append((keep, variant))
        return build_prompts(
            engine.tokenize, 48, 40, 12, size_s=keep, avoid_q_first=avoid, variant=variant
        )

    def pause(seconds: float) -> None:
        pauses.append((seconds, len(rows)))  # the rows measured before it

    lines = _LogLines()
    logger = logging.getLogger("kvcache_exp.measure.cure_plan")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    real_time, cures.time = cures.time, SimpleNamespace(sleep=pause)  # the cures' clock only
    try:
        cures.run_cures(
            engine,
            prompt_for,
            keep_sizes=list(keeps),
            trials=TRIALS,
            warmup_tokens=3,
            settle_s=SETTLE_S,
            recompute_shares=SHARES,
            quality_tokens=12,
            seed=7,
            rows=rows,
        )
    finally:
        cures.time = real_time
        engine.close()
        logger.removeHandler(lines)
        logger.setLevel(level)
    assert asked == [(keep, t) for keep in keeps for t in range(TRIALS)]
    firsts = [i for i, row in enumerate(rows) if row["order"] == 1]
    assert pauses == [(SETTLE_S, i) for i in firsts] and len(firsts) == len(keeps) * TRIALS
    # Every row has the CSV's columns, under their names (a misspelt key would otherwise
    # become an empty column), and is logged as it is measured, in order.
    # The numerics row is untimed and no cure: its timing and cure columns stay empty.
    untimed = {"ttft_ms", "prefill_tokens", "prefill_ms", "decode_tokens", "decode_ms"}
    untimed |= {"overhead_ms", "tokens_expected", "recompute_share", "recompute_tokens"}
    untimed |= {"restored_pos_max", "cache_pos_min", "cache_cells"}
    for row in rows:
        empty = untimed if row["cure"] == "cached_vs_full" else set()
        assert set(row) == set(CURE_COLUMNS) - empty, row["cure"]
    assert [line.split()[4] for line in lines.messages] == [row["cure"] for row in rows]
    return prompt_for, pd.DataFrame(rows, columns=list(CURE_COLUMNS))


class _LogLines(logging.Handler):
    """The messages of the cures' log lines, kept by the test."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("cure S="):
            self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cure-models")
    return {
        "llama1": make_tiny_llama(root / "llama1.gguf", n_layer=1),
        "llama2": make_tiny_llama(root / "llama2.gguf", n_layer=2),
        "gpt2": make_tiny_gpt2_gguf(root / "gpt2.gguf", n_layer=1),
    }


def test_one_layer_shift_is_the_recompute(checkpoints):
    """With one RoPE layer the shift, and every recompute of part of B, is exact: at every
    kept prefix, the first cell included."""
    _, df = _run(checkpoints["llama1"], keeps=(0, 8))
    assert df["cache_verified"].all(), df["cache_note"].tolist()
    shifted = df[df.cure.str.startswith("shift")]
    # Measured about 1e-12 nats with an F32 cache; rounding alone stays far below 1e-6.
    assert (shifted["kl_mean"] < 1e-6).all()
    assert (shifted["top1_agreement"] == 1.0).all()
    assert set(df["position_correction"]) == {"rope"}
    assert set(df["keep_tokens"]) == {0, 8}


def test_two_layer_cures_follow_the_design_and_the_head_helps_most(checkpoints):
    """Every cure on the two-layer model at S = 0 and 8: counts, cells, order and quality.

    One test, not several sharing a fixture: mutmut runs a mutant against the tests that
    called the mutated function, and a shared fixture's calls count for the first test
    that used it only, so a check placed in another test would never see the mutants."""
    df = _run(checkpoints["llama2"], keeps=(0, 8))[1]
    b, q = 40, 12
    timed = df[df.cure != "cached_vs_full"]
    expected = {"hit": q, "miss": b + q, "shift": q}
    expected |= {f"shift_{w}_{r:g}": round(r * b) + q for r in SHARES for w in ("tail", "head")}
    assert sorted(timed["cure"].unique()) == sorted(expected)
    for row in timed.itertuples():
        assert row.tokens_expected == expected[row.cure]
        assert row.prefill_tokens + row.decode_tokens == expected[row.cure]
        # the cache holds exactly the prompt, one cell per position from 0
        prompt = row.keep_tokens + (48 if row.cure == "hit" else 0) + b + q
        assert (row.cache_pos_min, row.cache_cells) == (0, prompt)
    assert set(timed["recompute_where"]) == {"", "head", "tail"}
    # every cure of a trial restored the same warmed cache: [S, A, B] and the warm-up's tokens
    for (keep, _), group in timed.groupby(["keep_tokens", "trial"]):
        assert set(group["restored_pos_max"]) == {keep + 48 + b + 3 - 1 - 1}
    # a shuffled order per trial, each row naming the cure before it
    orders = []
    for _, group in timed.groupby(["keep_tokens", "trial"], sort=False):
        group = group.sort_values("order")
        assert list(group["order"]) == list(range(1, len(group) + 1))
        assert list(group["predecessor"]) == ["", *group["cure"].iloc[:-1]]
        orders.append(tuple(group["cure"]))
    assert len(set(orders)) > 1
    # one numerics row per trial at the first kept prefix, and it is exact on a CPU
    numerics = df[df.cure == "cached_vs_full"]
    assert list(numerics["keep_tokens"]) == [0] * TRIALS
    assert list(numerics["cache_verified"]) == [True] * TRIALS
    assert set(numerics["order"]) == {0} and set(numerics["predecessor"]) == {""}
    assert set(numerics["recompute_where"]) == {""} and set(numerics["cache_note"]) == {""}
    assert (numerics["kl_mean"] == 0).all()
    # the hit is the warm cache itself: no cure, so no quality to compare
    quality_columns = ["kl_mean", "top1_agreement"]
    assert timed[timed.cure == "hit"][quality_columns].isna().all().all()
    assert timed[timed.cure != "hit"][quality_columns].notna().all().all()

    assert df["cache_verified"].all(), df["cache_note"].tolist()
    kl = df.groupby(["keep_tokens", "cure"])["kl_mean"].mean()
    for keep in (0, 8):
        assert kl[keep, "shift"] > 0.05  # measured about 0.3 nats
        assert kl[keep, "miss"] < 1e-6  # the floor: the exact answer through the cures' path
        assert kl[keep, "shift_tail_0.5"] < kl[keep, "shift"]
        assert kl[keep, "shift_head_0.5"] < kl[keep, "shift"]
    # The trials ran on distinct prompts: the quality differs from one to the next.
    shift = df[(df.cure == "shift") & (df.keep_tokens == 8)]["kl_mean"]
    assert shift.nunique() == TRIALS
    # A head recompute is not a tail recompute of the same cost: on every prompt its
    # tokens, and so its distributions, are others (a cure that lost its `where` would
    # recompute the tail twice and score the same).
    for share in SHARES:
        by = df.set_index(["keep_tokens", "trial", "cure"])
        head, tail = (
            by.xs(f"shift_head_{share:g}", level="cure"),
            by.xs(f"shift_tail_{share:g}", level="cure"),
        )
        assert (head["tokens_expected"] == tail["tokens_expected"]).all()
        assert (head["kl_mean"] != tail["kl_mean"]).all()


def test_gpt2_shift_is_uncorrected_and_differs(checkpoints):
    _, df = _run(checkpoints["gpt2"])
    assert df["cache_verified"].all()
    assert set(df["position_correction"]) == {"none (absolute positions)"}
    assert (df[df.cure == "shift"]["kl_mean"] > 0.01).all()  # measured about 0.07


def test_a_cure_that_evaluates_other_tokens_is_caught(checkpoints, monkeypatch):
    """An engine that recomputes one token more than asked: the counters give it away."""
    real = LlamaCppPython.shifted_first_token

    def one_more(self, tokens, removed, recompute=0, where="tail"):
        return real(self, tokens, removed, recompute + 1, where)

    monkeypatch.setattr(LlamaCppPython, "shifted_first_token", one_more)
    _, df = _run(checkpoints["llama1"])
    shifted = df[df.cure.str.startswith("shift")]
    assert not shifted["cache_verified"].any()
    assert shifted["cache_note"].str.contains("the call evaluated").all()
    assert df[df.cure.isin(["hit", "miss"])]["cache_verified"].all()


def test_a_shift_over_cells_that_were_never_removed_is_caught(checkpoints, monkeypatch):
    """B shifted back over A's cells, which stay: the counts and the highest position are
    those of a real shift, but the cache holds |A| cells too many, at doubled positions."""
    real = LlamaCppPython.shifted_first_token

    def keep_a(self, tokens, removed, recompute=0, where="tail"):
        call = real(self, tokens, removed, recompute, where)
        call.steps = [step for step in call.steps if step[:2] != ("rm", 0) or step[2:] != removed]
        return call

    monkeypatch.setattr(LlamaCppPython, "shifted_first_token", keep_a)
    _, df = _run(checkpoints["llama1"])
    shifted = df[df.cure.str.startswith("shift")]
    assert not shifted["cache_verified"].any()
    assert shifted["cache_note"].str.contains("positions held twice").all()
    assert df[df.cure.isin(["hit", "miss"])]["cache_verified"].all()


def test_a_shift_that_moves_nothing_is_caught(checkpoints, monkeypatch):
    """A's cells removed but B never moved (the shift asked for, not done), Q laid out
    after B where llama.cpp accepts it: the cache's cells give it away."""
    real = LlamaCppPython.shifted_first_token

    def no_shift(self, tokens, removed, recompute=0, where="tail"):
        call = real(self, tokens, removed, recompute, where)
        if recompute:
            return call
        size_a = removed[1] - removed[0]
        steps = []
        for step in call.steps:
            if step[0] == "add":
                continue  # the shift itself
            if step[0] == "rm" and step[3] == -1:
                step = ("rm", step[1], step[2] + size_a, -1)
            if step[0] == "decode":
                batch = self.batches[step[1]].handle
                for i in range(batch.n_tokens):
                    batch.pos[i] += size_a
            steps.append(step)
        call.steps = steps
        return call

    monkeypatch.setattr(LlamaCppPython, "shifted_first_token", no_shift)
    _, df = _run(checkpoints["llama1"])
    shift = df[df.cure == "shift"]
    assert not shift["cache_verified"].any()
    assert shift["cache_note"].str.contains("cells at positions").all()
    assert shift["cache_note"].str.contains("the call evaluated").sum() == 0


def test_quality_metrics_match_hand_computation():
    ref = np.log(np.array([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    cure = np.log(np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]))
    next_tokens = np.array([0, 0, 2])
    got = quality.compare(ref, cure, next_tokens, n_continuation=2)
    kl = [
        0.7 * np.log(0.7 / 0.6) + 0.2 * np.log(0.2 / 0.3),
        0.5 * np.log(0.5 / 0.2) + 0.25 * np.log(0.25 / 0.5) + 0.25 * np.log(0.25 / 0.3),
        0.0,
    ]
    assert got.kl_mean == pytest.approx(np.mean(kl))
    assert math.isnan(got.kl_p99)  # 3 positions: a 99th percentile would be the largest
    assert got.kl_max == pytest.approx(max(kl))
    assert got.top1_agreement == pytest.approx(2 / 3)  # the middle row's argmax differs
    dp = [0.6 - 0.7, 0.2 - 0.5, 0.8 - 0.8]
    assert got.rms_dp == pytest.approx(np.sqrt(np.mean(np.square(dp))))
    # continuation rows are the last two; in the first of them the cure's argmax differs
    assert got.first_divergence == 0
    assert got.positions == 3


def test_quality_without_divergence_counts_every_continuation_position():
    """The same distributions never diverge, even where the reference's generated token is
    not its batch argmax (generation decodes one token at a time, which rounds apart)."""
    logp = np.log(np.array([[0.9, 0.1], [0.2, 0.8]]))
    got = quality.compare(logp, logp, np.array([1, 1]), n_continuation=2)
    assert (got.kl_mean, got.top1_agreement, got.rms_dp) == (0.0, 1.0, 0.0)
    assert got.first_divergence == 2


def test_the_plan_of_cures_and_the_columns_of_a_row():
    """What each row of the cures CSV says about its cure, from the plan alone."""
    from kvcache_exp.measure import cure_plan as cp
    from kvcache_exp.measure.prompts import EMPTY, PromptSet, Segment

    found = cp.plan([0.0, 0.25, 0.5])
    assert [(c.name, c.share, c.where) for c in found[2:]] == [
        ("shift", 0.0, ""),
        ("shift_tail_0.25", 0.25, "tail"),
        ("shift_tail_0.5", 0.5, "tail"),
        ("shift_head_0.25", 0.25, "head"),
        ("shift_head_0.5", 0.5, "head"),
    ]
    hit, miss = found[:2]
    assert (hit.name, miss.name) == ("hit", "miss") and not hit.is_shift and found[2].is_shift
    assert [c.recompute_tokens(10) for c in found] == [0, 0, 0, 2, 5, 2, 5]
    assert cp.cure_columns(found[3], 10) == {
        "cure": "shift_tail_0.25",
        "recompute_share": 0.25,
        "recompute_where": "tail",
        "recompute_tokens": 2,
    }
    prompts = PromptSet(
        a=Segment("a", (1, 2, 3)), b=Segment("b", (4, 5)), q=Segment("q", (6,)), s=EMPTY
    )
    assert cp.sizes(prompts, "rope") == {
        "keep_tokens": 0,
        "size_a": 3,
        "size_b": 2,
        "size_q": 1,
        "position_correction": "rope",
    }


def test_the_cures_order_is_drawn_from_the_seed_the_prefix_and_the_trial():
    from kvcache_exp.measure import cure_plan as cp

    cures = [cp.Cure(f"c{i}") for i in range(12)]
    order = cp.shuffled(cures, 42, 8, 1)
    expected = np.random.default_rng([42, 8, 1]).permutation(12)
    assert [c.name for c in order] == [f"c{i}" for i in expected]
    assert cp.shuffled(cures, 42, 8, 2) != order and cp.shuffled(cures, 42, 0, 1) != order
    assert list(cp.in_order(order[:2])) == [(1, order[0], ""), (2, order[1], order[0].name)]


def test_a_cures_log_line(caplog):
    import logging

    from kvcache_exp.measure import cure_plan as cp

    assert [cp.figure(v, ".1f") for v in (None, math.nan, math.inf, 2.25)] == [
        "n/a",
        "n/a",
        "n/a",
        "2.2",
    ]
    row = {"keep_tokens": 8, "trial": 2, "cure": "shift", "predecessor": "", "ttft_ms": 5.0}
    row |= {"prefill_tokens": 3, "decode_tokens": 1}
    with caplog.at_level(logging.INFO, logger="kvcache_exp.measure.cure_plan"):
        cp.log_row(row)
        cp.log_row({**row, "predecessor": "hit", "cache_note": "bad"}, "server ")
    first, second = (r.getMessage() for r in caplog.records)
    assert first.startswith("cure S=8 trial 2 shift            after -")
    assert "ttft=5.0 ms eval=4 kl_mean=n/a" in first and "UNVERIFIED" not in first
    assert second.startswith("server cure S=8") and second.endswith(" UNVERIFIED: bad")


def test_quality_at_the_edges_of_its_inputs():
    """No position, one position, a 99th percentile from 100 positions on (its bound
    included), no continuation, and inputs that do not match."""
    rng = np.random.default_rng(3)

    def logp(n: int, vocab: int = 5) -> np.ndarray:
        x = rng.normal(size=(n, vocab))
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    empty = quality.compare(logp(0), logp(0), np.array([], dtype=int), 0)
    assert all(math.isnan(v) for v in empty.as_dict().values())
    ref, cure = logp(1), logp(1)
    one = quality.compare(ref, cure, np.array([2]), 1)
    assert one.positions == 1 and one.kl_mean == pytest.approx(quality.kl_divergence(ref, cure)[0])
    assert math.isnan(one.kl_p99)
    for n, has_p99 in ((99, False), (100, True), (150, True)):
        ref, cure = logp(n), logp(n)
        found = quality.compare(ref, cure, np.zeros(n, dtype=int), 0)
        kl = quality.kl_divergence(ref, cure)
        assert found.positions == n
        if has_p99:
            assert found.kl_p99 == pytest.approx(float(np.percentile(kl, 99)))
            assert found.kl_p99 < found.kl_max
        else:
            assert math.isnan(found.kl_p99)
        # no continuation: nothing can diverge, the first divergence is 0 of 0
        assert found.first_divergence == 0
    columns = quality.compare(ref, cure, np.zeros(150, dtype=int), 0).as_columns()
    assert columns["quality_positions"] == 150 and "positions" not in columns
    with pytest.raises(ValueError, match=r"shapes differ: reference \(3, 5\), cure \(2, 5\), 3 "):
        quality.compare(logp(3), logp(2), np.zeros(3, dtype=int), 0)
    with pytest.raises(ValueError, match=r"reference \(3, 5\), cure \(3, 5\), 2 next tokens"):
        quality.compare(logp(3), logp(3), np.zeros(2, dtype=int), 0)


def _gpt2(folder: Path, name: str, **kwargs) -> Path:
    """A tiny GPT-2 GGUF made from a checkpoint (``eos_dominant``, ``dominant``: a model
    whose greedy token is always that one)."""
    from gpt2_tiny import make_tiny_checkpoint

    from kvcache_exp.models.gpt2 import convert_gpt2_to_gguf

    checkpoint = make_tiny_checkpoint(folder / name, n_positions=256, **kwargs)
    return convert_gpt2_to_gguf(checkpoint, folder / f"{name}.gguf")


def test_the_reference_is_one_full_recompute_of_s_b_q(checkpoints):
    """The exact answer every cure is compared with: its context is ``[S, B]``, what it
    scores is Q and the greedy continuation, and its log-probabilities are those of one
    recompute of everything from an empty cache."""
    engine = _engine(checkpoints["llama2"])
    try:
        prompts = build_prompts(engine.tokenize, 48, 40, 12, size_s=8)
        ref = cures.reference(engine, prompts, 6)
        assert engine.cached == []  # left empty for the cures
        full = engine.log_probs(ref.context + ref.scored, scored=len(ref.scored))
    finally:
        engine.close()
    s, b, q = (list(part.tokens) for part in (prompts.s, prompts.b, prompts.q))
    assert ref.context == s + b
    assert len(ref.continuation) == 6  # no early stop on this model
    assert ref.scored == q + ref.continuation[:-1]
    assert list(ref.next_tokens) == q[1:] + ref.continuation
    assert ref.log_probs.shape[0] == len(ref.scored)
    assert ref.compare(full).kl_mean == 0  # bit-identical on a CPU


def test_an_end_of_text_at_once_is_the_references_whole_continuation(tmp_path):
    """A model that ends every generation at once: the reference's continuation is the
    end-of-text token (scored as the answer after Q), and the warm-up, which generated
    nothing, keeps the prompts it drew."""
    eot = tiny_tokenizer()[3]
    engine = _engine(_gpt2(tmp_path, "eos", eos_dominant=True))
    try:

        def prompt_for(variant: int, keep: int, avoid: int | None):
            return build_prompts(engine.tokenize, 48, 40, 12, size_s=keep, avoid_q_first=avoid)

        prompts, _, held = cures._warm(engine, prompt_for, 0, 4, 3)
        ref = cures.reference(engine, prompts, 6)
        assert prompts == prompt_for(0, 4, None)
    finally:
        engine.close()
    assert held == len(prompts.warmup)
    q = list(prompts.q.tokens)
    assert ref.continuation == [eot]
    assert ref.scored == q
    assert list(ref.next_tokens) == q[1:] + [eot]


def test_q_is_redrawn_when_the_warm_up_generates_its_first_token(tmp_path):
    """The cures' warm-up, like the seed's prompts: when the model generates Q's first
    token after ``[S, A, B]``, a hit could reuse that token, so Q is drawn again for the
    same variant and kept prefix, with A and B unchanged. A tiny GPT-2 whose greedy token
    is always the first token of the draft's Q forces that case."""
    strings = {i: s for s, i in build_vocab(train_merges(CORPUS, 64)).items()}
    engine = _engine(_gpt2(tmp_path, "any"))
    try:
        draft = build_prompts(engine.tokenize, 48, 40, 12, size_s=4, variant=1, variants=2)
    finally:
        engine.close()
    first = draft.q.tokens[0]
    engine = _engine(_gpt2(tmp_path, "echo", dominant=strings[first]))
    asked = []

    def prompt_for(variant: int, keep: int, avoid: int | None):
        asked.append((variant, keep, avoid))
        return build_prompts(
            engine.tokenize,
            48,
            40,
            12,
            size_s=keep,
            avoid_q_first=avoid,
            variant=variant,
            variants=2,
        )

    try:
        prompts, _, held = cures._warm(engine, prompt_for, 1, 4, 1)
    finally:
        engine.close()
    assert asked == [(1, 4, None), (1, 4, first)]
    assert prompts.q.tokens[0] != first
    assert (prompts.s, prompts.a, prompts.b) == (draft.s, draft.a, draft.b)
    assert held == len(draft.warmup)  # and the one generated token, not evaluated


def test_cells_that_cannot_be_read_leave_every_row_unverified(checkpoints, monkeypatch):
    """A llama.cpp whose state this package cannot parse: the cures are still measured,
    with their cell counts empty and every row unverified, saying why."""
    monkeypatch.setattr(LlamaCppPython, "cache_positions", lambda self, seq=0: None)
    _, df = _run(checkpoints["llama1"])
    assert df[df.cure != "cached_vs_full"]["cache_cells"].isna().all()
    assert not df["cache_verified"].any()
    assert df["cache_note"].str.contains("could not be read from llama.cpp's state").all()
