"""Reading results CSVs back: the seed's columns first, ours after, types checked.

CSVs from the seed itself (without our extra columns) still load: missing extras become
NaN and size_a/size_b are read from the file name, so old runs can be summarised next to
new ones.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from kvcache_exp.columns import CONDITIONS, EXTRA_RESULT_COLUMNS, SEED_RESULT_COLUMNS

_RESULTS_NAME = re.compile(r"_a(?P<a>\d+)_b(?P<b>\d+)\.csv$")
_TEXT_COLUMNS = frozenset({"condition", "finish_reason", "cache_verified", "cache_note"})


def load_results(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Concatenate results CSVs after checking that each keeps the seed's columns first.

    CSVs from the seed itself (without our extra columns) still load: missing extras
    become NaN and size_a/size_b are read from the file name, so old runs can be
    summarised next to new ones.
    """
    frames = [_read_results(Path(p)) for p in paths]
    if not frames:
        raise ValueError("load_results: no results files given")
    return pd.concat(frames, ignore_index=True)


def _read_results(path: Path) -> pd.DataFrame:
    """Read and validate one results CSV."""
    df = pd.read_csv(path)
    head = tuple(df.columns[: len(SEED_RESULT_COLUMNS)])
    if head != SEED_RESULT_COLUMNS:
        raise ValueError(
            f"{path}: the first columns must be the seed's {list(SEED_RESULT_COLUMNS)} "
            f"in that order, found {list(head)}"
        )
    bad = sorted(set(df["condition"].astype(str)) - set(CONDITIONS))
    if bad:
        raise ValueError(f"{path}: unknown condition(s) {bad}; expected {list(CONDITIONS)}")
    if len(df) and not pd.api.types.is_numeric_dtype(df["ttft_ms"]):
        raise ValueError(f"{path}: column ttft_ms is not numeric")
    return _complete_columns(df, path)


def _complete_columns(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Add missing extra columns (NaN, sizes from the file name) and coerce numbers."""
    df = df.copy()
    for name in ("size_a", "size_b"):
        if name not in df.columns:
            df[name] = _size_from_name(path, name[-1])
    for name in EXTRA_RESULT_COLUMNS:
        if name not in df.columns:
            df[name] = math.nan
        elif name not in _TEXT_COLUMNS:
            df[name] = pd.to_numeric(df[name], errors="coerce")
    return df


def _size_from_name(path: Path, part: str) -> int:
    """size_a or size_b from a seed-style name such as results_phase3b_a512_b256.csv."""
    match = _RESULTS_NAME.search(path.name)
    if not match:
        raise ValueError(
            f"{path}: no size_{part} column and the name does not end in _a<A>_b<B>.csv"
        )
    return int(match.group(part))


def verified_flags(values: pd.Series) -> pd.Series:
    """cache_verified as True/False/NaN whether it was read as bool or as text."""
    text = values.astype(str).str.strip().str.lower()
    return text.map({"true": True, "1": True, "false": False, "0": False})


def verified_only(df: pd.DataFrame) -> pd.DataFrame:
    """The trials that passed cache verification (rows without the flag are kept)."""
    flags = verified_flags(df["cache_verified"])
    return df[flags.ne(False)]
