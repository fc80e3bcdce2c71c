"""The replay's summary and figures, from turn rows made here: intervals over whole
conversations from the package's one bootstrap, unverified turns in no statistic, and
the quality table by the number of shifts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kvcache_exp.analysis import conversations as conv
from kvcache_exp.analysis import stats
from kvcache_exp.chat.columns import TURN_COLUMNS
from kvcache_exp.report.conversations import (
    build,
    plot_conversation_csvs,
    write_conversations_summary,
)


def turn_rows(
    policy: str, cache: str, n_conv: int = 4, turns: int = 6, seed: int = 0
) -> list[dict]:
    """Rows shaped like a replay's: TTFT low on kept turns, high after a drop (turn 4+
    drops under drop_oldest with prefix)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_conv):
        for t in range(1, turns + 1):
            removed = t >= 4
            miss = removed and policy == "drop_oldest" and cache == "prefix"
            prompt = 60 * min(t, 4)
            cached = 20 if miss else max(prompt - 60, 0)
            shifts = (t - 3) if cache == "shift" and removed else 0
            rows.append(
                {
                    **{k: math.nan for k in TURN_COLUMNS},
                    "set": "chats.2" if c % 2 else "chats.1",
                    "conversation": f"c{c}",
                    "policy": policy,
                    "cache": cache,
                    "replies": "live",
                    "render": "client",
                    "turn": t,
                    "removed": removed,
                    "prompt_tokens": prompt,
                    "cached_tokens": cached,
                    "expected_cached": cached,
                    "evaluated_tokens": prompt - cached,
                    "shifts": shifts,
                    "ttft_ms": (2.0 * (prompt - cached) + 10) * rng.uniform(0.9, 1.1),
                    "decode_tok_s": 80.0,
                    "finish_reason": "length",
                    "tripwire_cause": "truncation" if removed else "none",
                    "tripwire_before": "",
                    "tripwire_cached": "",
                    "tripwire_prompt": "",
                    "kl_mean": 0.01 * shifts if shifts else math.nan,
                    "top1_agreement": 1 - 0.05 * shifts if shifts else math.nan,
                    "first_divergence": 8 if shifts else math.nan,
                    "quality_positions": 8 if shifts else 0,
                    "render_ms": 0.2,
                    "tokenize_ms": 1.0,
                    "compare_ms": 0.3,
                    "cache_verified": True,
                    "cache_note": "",
                }
            )
    return rows


@pytest.fixture()
def csvs(tmp_path):
    paths = []
    for policy, cache in (
        ("drop_oldest", "prefix"),
        ("drop_oldest", "shift"),
        ("drop_chunk", "prefix"),
    ):
        rows = pd.DataFrame(turn_rows(policy, cache), columns=list(TURN_COLUMNS))
        for shard, part in rows.groupby("set"):
            path = tmp_path / shard / f"{policy}-{cache}.csv"
            path.parent.mkdir(exist_ok=True)
            part.to_csv(path, index=False)
            paths.append(path)
    return paths


def test_the_pooled_quantile_resamples_whole_conversations():
    """The statistic the bootstrap resamples with is the quantile of the drawn
    conversations' turns put together, repeats included."""
    values = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 2.0])
    owner = np.array([0, 0, 1, 1, 2, 2])
    for q in (0.5, 0.95):
        statistic = conv._pooled_quantile(values, owner, 3, q)
        for draw in ([0, 1, 2], [2, 2, 0], [1, 1, 1]):
            pooled = np.concatenate([values[owner == c] for c in draw])
            assert statistic(np.array(draw, dtype=float)) == pytest.approx(np.quantile(pooled, q))
        both = statistic(np.array([[0, 1, 2], [2, 2, 0]], dtype=float))
        assert both.shape == (2,)


def test_the_summary_pools_shards_and_gives_intervals_over_conversations(csvs):
    turns = conv.load_turns(csvs)
    assert set(turns["set"]) == {"chats"}
    summary = conv.summarize_turns(turns).set_index(["policy", "cache"])
    prefix, shift = summary.loc[("drop_oldest", "prefix")], summary.loc[("drop_oldest", "shift")]
    assert (prefix["conversations"], prefix["turns"], prefix["turns_unverified"]) == (4, 24, 0)
    assert prefix["ttft_p95_ms"] > prefix["ttft_median_ms"] > shift["ttft_median_ms"]
    for row in (prefix, shift):
        assert (
            row["ttft_median_ci_low_ms"] <= row["ttft_median_ms"] <= row["ttft_median_ci_high_ms"]
        )
    assert prefix["reused_share"] < shift["reused_share"]
    assert prefix["tripwire_truncation"] == 12 and prefix["tripwire_none"] == 12
    assert prefix["removed_share"] == pytest.approx(0.5)
    per = (
        pd.DataFrame(turn_rows("drop_oldest", "prefix"))
        .groupby("conversation")["evaluated_tokens"]
        .sum()
    )
    assert prefix["evaluated_per_conversation"] == pytest.approx(stats.median(per))
    assert prefix["replay_ms"] == pytest.approx(1.5)
    assert shift["max_shifts"] == 3


def test_unverified_turns_never_enter_a_statistic(csvs, tmp_path):
    turns = conv.load_turns(csvs)
    before = conv.summarize_turns(turns)
    bad = pd.read_csv(csvs[0])
    bad["ttft_ms"] = 1e9  # absurd, and unverified: must change nothing but the counts
    bad["cache_verified"] = False
    bad["cache_note"] = "made up"
    bad.to_csv(csvs[0], index=False)
    after = conv.summarize_turns(conv.load_turns(csvs))
    row = after[(after["policy"] == "drop_oldest") & (after["cache"] == "prefix")].iloc[0]
    assert row["turns_unverified"] == len(bad)
    assert row["ttft_p95_ms"] < 1e9 and row["turns"] == 24 - len(bad)
    untouched = before[before["cache"] == "shift"].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        untouched, after[after["cache"] == "shift"].reset_index(drop=True)
    )
    doc, _, _ = build(conv.load_turns(csvs), "model")
    assert any("failed cache verification" in w for w in doc.warnings)


def test_quality_by_the_number_of_shifts(csvs):
    table = conv.quality_by_shifts(conv.load_turns(csvs))
    assert list(table["shifts"]) == [1, 2, 3]
    assert set(table["cache"]) == {"shift"}
    assert list(table["kl_mean"]) == pytest.approx([0.01, 0.02, 0.03])
    assert list(table["top1_agreement"]) == pytest.approx([0.95, 0.90, 0.85])
    assert (table["conversations"] == 4).all()


def test_the_summary_files_and_figures_are_written(csvs, tmp_path):
    out = tmp_path / "out"
    write_conversations_summary(
        csvs, out / "s.csv", out / "q.csv", out / "s.md", out / "s.html", "tiny"
    )
    md = (out / "s.md").read_text()
    assert "## Per policy and cache behaviour" in md and "`drop_chunk`" in md
    assert "## Quality after successive shifts" in md
    assert "<table>" in (out / "s.html").read_text()
    assert list(pd.read_csv(out / "s.csv").columns) == list(conv.SUMMARY_COLUMNS)
    assert list(pd.read_csv(out / "q.csv").columns) == list(conv.QUALITY_COLUMNS)
    pngs = [out / f"{name}.png" for name in ("ttft", "tokens", "quality")]
    plot_conversation_csvs(csvs, *pngs, "tiny")
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Without any shifted cache, the quality figure says so instead of failing.
    plot_conversation_csvs(csvs[:1], *pngs, "tiny")
    assert pngs[2].stat().st_size > 0
