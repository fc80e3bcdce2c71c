"""The verdicts' sentences and numbers, pinned for fixed synthetic runs.

The other verdict tests check each status on data made for it; a reader, though, reads
the reason: the medians, intervals, p-values and counts it names, and the rule. Mutation
testing found that a reason could lose a number, name the wrong count of set-aside
trials, or drop the bootstrap's seed, and every other test still passed. Here the whole
verdict (status, reason, evidence) of a few fixed runs, for the seed's claims and for
the cures, is compared with what was reviewed and stored in ``golden/verdicts.json``.

When a change to a verdict is intended, regenerate the file and review its diff:
``KVCACHE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_verdict_texts.py``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest
from synthetic import make_results
from test_cures_analysis import make_cures

from kvcache_exp.analysis import cure_verdicts, cures, trials
from kvcache_exp.analysis import verdicts as vd

GOLDEN = Path(__file__).with_name("golden") / "verdicts.json"


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


def _seed_runs() -> dict[str, object]:
    return {
        "slow_misses": _slow_misses(),
        "supported": make_results(),
        "noisy": make_results(noise_cv=0.2, seed=3),
        "quadratic_miss": make_results(miss_ttft=_quadratic_miss),
        "rising_hit": make_results(hit_ttft=_rising_hit),
        "slower_decode": make_results(miss_decode_tok_s=180.0, noise_cv=0.03, seed=5),
    }


def _cure_runs() -> dict[str, object]:
    return {
        "default": make_cures(),
        "two_prefixes": make_cures(((0, 64, 64), (8, 64, 64)), trials=4),
    }


def _as_json(found: list[vd.Verdict]) -> list[dict]:
    out = []
    for verdict in found:
        record = asdict(verdict)
        record["evidence"] = {k: float(f"{v:.6g}") for k, v in sorted(verdict.evidence.items())}
        out.append(record)
    return out


def _current() -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for name, df in _seed_runs().items():
        found[f"seed/{name}"] = _as_json(vd.verdicts(df))
        found[f"seed/{name}/per_configuration"] = _as_json(
            vd.miss_costlier_per_config(trials.by_configuration(df))
        )
    for name, df in _cure_runs().items():
        summary = cures.summarize_cures(df)
        found[f"cures/{name}"] = _as_json(cure_verdicts.verdicts_from_summary(summary))
    return found


@pytest.fixture(scope="module")
def current() -> dict[str, list[dict]]:
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
