"""The verdicts' sentences and numbers, pinned for fixed synthetic runs.

The other verdict tests check each status on data made for it; a reader, though, reads
the reason: the medians, intervals, p-values and counts it names, and the rule. Mutation
testing found that a reason could lose a number, name the wrong count of set-aside
trials, or drop the bootstrap's seed, and every other test still passed. Here the whole
verdict (status, reason, evidence) of a few fixed runs, for the seed's claims and for
the cures, and every cell of the seed's summary table (``summary.csv``) are compared
with what was reviewed and stored in ``golden/verdicts.json``.

When a change to a verdict is intended, regenerate the file and review its diff:
``KVCACHE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_verdict_texts.py``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
from synthetic import SEED_CONFIGS, make_results
from test_cures_analysis import make_cures

from kvcache_exp.analysis import cure_verdicts, cures, tables, trials
from kvcache_exp.analysis import verdicts as vd

GOLDEN = Path(__file__).with_name("golden") / "verdicts.json"
#: Fewer resamples than the default (quicker), and a seed of their own: every interval
#: must come from the settings given.
BOOT = {"n_resamples": 2_000, "seed": 11}


def _quadratic_miss(a: int, b: int, q: int) -> float:
    t = (b - 256) / 256
    return 100.0 + 200.0 * t * t


def _rising_hit(a: int, b: int, q: int) -> float:
    return 30.0 * (1.0 + 0.5 * (b - 256) / 256)


def _slow_misses() -> object:
    """Clean data but one miss trial per configuration 3x slow: the reasons must count
    the set-aside trials of the right condition (none of the hits)."""
    df = make_results()
    first = df[df.condition == "miss"].groupby(["size_a", "size_b"]).head(1).index
    df.loc[first, "ttft_ms"] *= 3.0
    df.loc[first, "decode_tok_s"] /= 3.0
    return df


def _one_configuration_unverified() -> object:
    """Every trial of the middle configuration failed cache verification: its summary
    row must still be there, with no statistic and every trial counted as unverified."""
    df = make_results()
    df.loc[(df.size_a == 384) & (df.size_b == 384), "cache_verified"] = False
    return df


def _seed_runs() -> dict[str, object]:
    return {
        "none_verified": make_results().assign(cache_verified=False),
        "one_unverified": _one_configuration_unverified(),
        "thirty_trials": make_results(trials=30, seed=6),
        "two_configurations": make_results(SEED_CONFIGS[:2]),
        "faster_miss": make_results(miss_ttft=lambda a, b, q: 10.0),
        "falling_miss": make_results(miss_ttft=lambda a, b, q: 400.0 - 0.5 * b),
        "no_decode": make_results().drop(columns=["decode_tok_s"]),
        # the middle configuration has one trial per condition: no interval of its own
        "one_single_trial": pd.concat(
            [
                make_results(SEED_CONFIGS[:1]),
                make_results(SEED_CONFIGS[1:2], trials=1),
                make_results(SEED_CONFIGS[2:]),
            ],
            ignore_index=True,
        ),
        "slow_misses": _slow_misses(),
        "supported": make_results(),
        "noisy": make_results(noise_cv=0.2, seed=3),
        "quadratic_miss": make_results(miss_ttft=_quadratic_miss),
        "rising_hit": make_results(hit_ttft=_rising_hit),
        "slower_decode": make_results(miss_decode_tok_s=180.0, noise_cv=0.03, seed=5),
    }


def _without(df: pd.DataFrame, cure: str) -> pd.DataFrame:
    return df[df.cure != cure].reset_index(drop=True)


def _tail_figures_and_two_corrections() -> pd.DataFrame:
    """Every prompt's 99th-percentile KL recorded, one cure without its RMS, and the first
    trial's rows from a model without RoPE (two position corrections pooled)."""
    df = make_cures()
    df["kl_p99"] = 3 * df["kl_mean"]
    df.loc[df.cure == "shift_tail_0.1", "rms_dp"] = math.nan
    df.loc[df.trial == 1, "position_correction"] = "none (absolute positions)"
    return df


def _cure_runs() -> dict[str, object]:
    return {
        "default": make_cures(),
        "two_prefixes": make_cures(((0, 64, 64), (8, 64, 64)), trials=4),
        # a one-layer model's shift: KL in the 1e-7s, printed with an exponent
        "near_exact": make_cures(quality={"shift": (1.5e-7, 1.0)}, floor=(2.5e-9, 1.0)),
        "absolute_positions": make_cures(trials=3, correction="none (absolute positions)"),
        "one_trial": make_cures(trials=1),
        "slow_shift_trial": make_cures(
            trials=8, ttft={"shift": [15.0, 15.2, 14.8, 15.1, 14.9, 15.0, 15.1, 150.0]}
        ),
        "no_hit": _without(make_cures(), "hit"),
        "no_miss": _without(make_cures(), "miss"),
        "free_miss": make_cures(trials=3, ttft={"hit": [10, 10, 10], "miss": [10, 10, 10]}),
        "tail_figures": _tail_figures_and_two_corrections(),
    }


def _as_json(found: list[vd.Verdict]) -> list[dict]:
    out = []
    for verdict in found:
        record = asdict(verdict)
        record["evidence"] = {k: _plain(v) for k, v in sorted(verdict.evidence.items())}
        out.append(record)
    return out


def _plain(value: object) -> object:
    """A table's cell as JSON compares it: floats to 6 significant digits, NaN as None."""
    if isinstance(value, str):
        return value
    number = float(value)  # type: ignore[arg-type]
    return None if math.isnan(number) else float(f"{number:.6g}")


def _table_json(table: pd.DataFrame) -> list[dict]:
    """A summary table's rows (summary.csv's, cures_summary.csv's), keyed by configuration
    and, for the cures, kept prefix and cure."""
    found = []
    for row in table.to_dict("records"):
        key = f"{row['size_a']}/{row['size_b']}"
        if "cure" in row:
            key = f"{row['cure']} S={row['keep_tokens']} {key}"
        found.append({"key": key, **{k: _plain(v) for k, v in row.items()}})
    return found


def _current() -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for name, df in _seed_runs().items():
        found[f"seed/{name}"] = _as_json(vd.verdicts(df, **BOOT))
        found[f"seed/{name}/per_configuration"] = _as_json(
            vd.miss_costlier_per_config(trials.by_configuration(df), **BOOT)
        )
        found[f"seed/{name}/summary_table"] = _table_json(tables.summarize(df))
    for name, df in _cure_runs().items():
        summary = cures.summarize_cures(df, **BOOT)
        found[f"cures/{name}"] = _as_json(cure_verdicts.verdicts_from_summary(summary))
        found[f"cures/{name}/summary_table"] = _table_json(summary)
    return found


@pytest.fixture(scope="module")
def current() -> dict[str, list[dict]]:
    with warnings.catch_warnings():
        # numpy's warnings (a division by zero, an empty median) mean a guard is missing
        warnings.simplefilter("error", RuntimeWarning)
        found = _current()
    if os.environ.get("KVCACHE_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(found, indent=1, ensure_ascii=False) + "\n")
    return found


def test_the_verdicts_say_what_was_reviewed(current):
    golden = json.loads(GOLDEN.read_text())
    assert sorted(current) == sorted(golden)
    for run, found in current.items():
        assert len(found) == len(golden[run]), run
        for got, want in zip(found, golden[run], strict=True):
            assert got == want, f"{run}: {want['key']}"
