"""The trials behind every number of the results' summary, chosen once.

The seed's table (:mod:`.tables`), the line fits and the verdicts (:mod:`.verdicts`) all
start from :func:`by_configuration`, so they describe the same trials and a quantity that
appears in two places (the degradation and the miss/hit ratio, say) has one value and
one interval. Which trials count:

- Trials that failed cache verification, and trials without a finite TTFT or known
  sizes, never enter a statistic: their numbers do not measure what the design says.
- A trial far slower than the rest of its configuration and condition (more than
  :data:`SLOW_OUTLIER_K` robust standard deviations, on the log scale; the rule is
  :func:`.stats.slow_outliers`) is set aside as a hiccup of the shared machine, and
  counted, so that every table and reason can say how many were. TTFT is judged on its
  own (slow is high) and so is decode throughput (slow is low): a trial whose decode
  stalled still times its first token correctly. Medians alone resist such trials, but
  their bootstrap does not: in a configuration with 2 slow trials of 10, 3% of resamples
  draw 5 or more of them, which moves an interval's end to the hiccups' level and left
  most equivalence tests undetermined even at 5% noise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kvcache_exp.analysis import stats
from kvcache_exp.analysis.load import verified_flags

#: A trial more than this many robust standard deviations slower than its configuration's
#: median (log scale, per condition; see :func:`.stats.slow_outliers`) is set aside as a
#: hiccup of the shared machine; None keeps every trial.
SLOW_OUTLIER_K: float | None = 5.0


@dataclass(frozen=True)
class Configuration:
    """The trials of one configuration (size_a, size_b) that enter the statistics.

    ``hit`` and ``miss`` are the kept TTFTs (ms), ``hit_rows`` and ``miss_rows`` the
    positions (``DataFrame.iloc``) of those same trials in the frame they came from, for
    the columns other than TTFT; ``hit_decode`` and ``miss_decode`` are the kept decode
    throughputs (tok/s) of the trials with a finite TTFT.
    """

    size_a: int
    size_b: int
    hit: np.ndarray
    miss: np.ndarray
    hit_decode: np.ndarray
    miss_decode: np.ndarray
    hit_rows: np.ndarray
    miss_rows: np.ndarray
    #: Tokens recomputed on a miss (B + Q), or B when the CSVs do not record it.
    x_miss: float
    #: Slow outliers set aside: hit TTFT, miss TTFT, hit decode, miss decode.
    set_aside: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def label(self) -> str:
        """``A/B``, as the seed writes configurations."""
        return f"{self.size_a}/{self.size_b}"

    @property
    def ttft_set_aside(self) -> int:
        """Slow TTFT trials set aside, hit and miss together."""
        return self.set_aside[0] + self.set_aside[1]


def outlier_rule() -> str:
    """The rule for slow outliers in words, for the summary to state where it applies."""
    if SLOW_OUTLIER_K is None:
        return "no trial is set aside as a slow outlier"
    return (
        f"trials more than {SLOW_OUTLIER_K:g} robust standard deviations slower than the "
        "median of their configuration and condition (on a log scale) are set aside as "
        "slow outliers"
    )


def _numeric(df: pd.DataFrame, column: str) -> np.ndarray:
    """A column as floats (NaN where missing or not a number)."""
    if column not in df.columns:
        return np.full(len(df), math.nan)
    return pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)


def _without_slow(values: np.ndarray, slow: str) -> tuple[np.ndarray, np.ndarray]:
    """The mask of the values to keep, and the mask of the slow outliers set aside.

    ``slow`` is "high" for a time and "low" for a throughput (see
    :func:`.stats.slow_outliers`). Non-finite values are not kept, nor counted as set aside.
    """
    finite = np.isfinite(values)
    if SLOW_OUTLIER_K is None:
        return finite, np.zeros_like(finite)
    slow_flags = stats.slow_outliers(values, k=SLOW_OUTLIER_K, slow=slow)
    return finite & ~slow_flags, slow_flags


def by_configuration(df: pd.DataFrame) -> list[Configuration]:
    """One :class:`Configuration` per (size_a, size_b), in the order they first appear.

    Only verified hit/miss trials with a finite TTFT and known sizes are kept, less the
    slow outliers (see the module docstring).
    """
    verified = (
        verified_flags(df["cache_verified"]).ne(False).to_numpy()
        if "cache_verified" in df.columns
        else np.ones(len(df), dtype=bool)
    )
    cond = df["condition"].astype(str).to_numpy()
    ttft, size_a, size_b = (_numeric(df, c) for c in ("ttft_ms", "size_a", "size_b"))
    decode, recomputed = _numeric(df, "decode_tok_s"), _numeric(df, "tokens_recomputed")
    known = np.isfinite(np.column_stack([ttft, size_a, size_b])).all(axis=1)
    usable = verified & np.isin(cond, ("hit", "miss")) & known
    positions = np.flatnonzero(usable)
    if positions.size == 0:
        return []
    pairs = np.column_stack([size_a[positions], size_b[positions]])
    unique, first, codes = np.unique(pairs, axis=0, return_index=True, return_inverse=True)
    codes = codes.ravel()
    configs = []
    for code in np.argsort(first):  # in the order the configurations first appear
        here = positions[codes == code]
        hit, miss = here[cond[here] == "hit"], here[cond[here] == "miss"]
        keep_hit, slow_hit = _without_slow(ttft[hit], "high")
        keep_miss, slow_miss = _without_slow(ttft[miss], "high")
        keep_hd, slow_hd = _without_slow(decode[hit], "low")
        keep_md, slow_md = _without_slow(decode[miss], "low")
        configs.append(
            Configuration(
                int(unique[code, 0]),
                int(unique[code, 1]),
                hit=ttft[hit[keep_hit]],
                miss=ttft[miss[keep_miss]],
                hit_decode=decode[hit[keep_hd]],
                miss_decode=decode[miss[keep_md]],
                hit_rows=hit[keep_hit],
                miss_rows=miss[keep_miss],
                x_miss=stats.median(recomputed[miss]),
                set_aside=tuple(int(s.sum()) for s in (slow_hit, slow_miss, slow_hd, slow_md)),
            )
        )
    if any(not math.isfinite(c.x_miss) for c in configs if c.miss.size):
        # Seed-style CSVs do not record it. Q is the same in every configuration, so
        # B gives the same slope and the same bow as B + Q.
        configs = [dataclasses.replace(c, x_miss=float(c.size_b)) for c in configs]
    return configs


def kept_rows(df: pd.DataFrame, configs: list[Configuration]) -> pd.DataFrame:
    """The rows of ``df`` whose TTFT the configurations keep, hit and miss, in frame order."""
    rows = [r for c in configs for r in (c.hit_rows, c.miss_rows)]
    return df.iloc[np.sort(np.concatenate(rows))] if rows else df.iloc[:0]
