"""Reading the CSVs back, checked: the results (seed-compatible) and the cures (strict).

Results CSVs from the seed itself (without our extra columns) still load: missing extras
become NaN and size_a/size_b are read from the file name, so old runs can be summarised
next to new ones. Cures CSVs are ours alone, so they must match
:data:`~kvcache_exp.columns.CURE_COLUMNS` exactly. Every error names the file and what
is wrong with it, before any statistic is computed.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from kvcache_exp.analysis.cure_names import is_known
from kvcache_exp.columns import (
    CONDITIONS,
    CURE_COLUMNS,
    EXTRA_RESULT_COLUMNS,
    SEED_RESULT_COLUMNS,
)

#: Both kinds of CSV are named ..._a<A>_b<B>.csv, e.g. results_phase3b_a512_b256.csv.
_SIZES_NAME = re.compile(r"_a(?P<a>\d+)_b(?P<b>\d+)\.csv$")
_RESULT_TEXT_COLUMNS = frozenset({"condition", "finish_reason", "cache_verified", "cache_note"})
_CURE_TEXT_COLUMNS = frozenset(
    {
        "cure",
        "predecessor",
        "position_correction",
        "recompute_where",
        "cache_verified",
        "cache_note",
    }
)
_CURE_KEY_COLUMNS: tuple[str, ...] = ("trial", "keep_tokens", "size_a", "size_b")


# --------------------------------------------------------------------------- shared


def _read_each(
    paths: Iterable[str | os.PathLike[str]], read: Callable[[Path], pd.DataFrame], kind: str
) -> list[pd.DataFrame]:
    """``read`` of every path; at least one path is needed."""
    frames = [read(Path(p)) for p in paths]
    if not frames:
        raise ValueError(f"load_{kind}: no {kind} files given")
    return frames


def _read_csv(path: Path, **options: object) -> pd.DataFrame:
    """pandas' read_csv, with an empty file reported as such."""
    try:
        return pd.read_csv(path, **options)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file; expected at least the header") from None


def _sizes_in_name(path: Path) -> dict[str, int] | None:
    """{"a": A, "b": B} from a name ending in _a<A>_b<B>.csv, None for another name."""
    match = _SIZES_NAME.search(path.name)
    return {part: int(match.group(part)) for part in ("a", "b")} if match else None


def verified_flags(values: pd.Series) -> pd.Series:
    """cache_verified as True/False/NaN whether it was read as bool or as text."""
    text = values.astype(str).str.strip().str.lower()
    return text.map({"true": True, "1": True, "false": False, "0": False})


# --------------------------------------------------------------------------- results


def load_results(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Concatenate results CSVs after checking that each keeps the seed's columns first.

    CSVs from the seed itself (without our extra columns) still load: missing extras
    become NaN and size_a/size_b are read from the file name, so old runs can be
    summarised next to new ones.
    """
    return pd.concat(_read_each(paths, _read_results, "results"), ignore_index=True)


def _read_results(path: Path) -> pd.DataFrame:
    """Read and validate one results CSV."""
    df = _read_csv(path)
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
        elif name not in _RESULT_TEXT_COLUMNS:
            df[name] = pd.to_numeric(df[name], errors="coerce")
    return df


def _size_from_name(path: Path, part: str) -> int:
    """size_a or size_b from a seed-style name such as results_phase3b_a512_b256.csv."""
    named = _sizes_in_name(path)
    if named is None:
        raise ValueError(
            f"{path}: no size_{part} column and the name does not end in _a<A>_b<B>.csv"
        )
    return named[part]


# --------------------------------------------------------------------------- cures


def load_cures(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Concatenate cures CSVs after checking each one's columns, cure names and numbers.

    Header-only files (cures disabled) are valid and contribute no rows; the result then
    has the columns and no rows. Every error names the file and what is wrong with it.
    """
    frames = _read_each(paths, _read_cures, "cures")
    rows = [f for f in frames if len(f)]
    return pd.concat(rows, ignore_index=True) if rows else frames[0]


def _read_cures(path: Path) -> pd.DataFrame:
    """Read and validate one cures CSV."""
    df = _read_csv(path, dtype=dict.fromkeys(sorted(_CURE_TEXT_COLUMNS), str))
    _check_cure_columns(df, path)
    df = _cure_numbers(df, path)
    _check_cure_rows(df, path)
    for name in ("cache_note", "predecessor", "recompute_where"):
        df[name] = df[name].fillna("")
    for name in _CURE_KEY_COLUMNS:
        df[name] = df[name].astype(int)
    return df


def _check_cure_columns(df: pd.DataFrame, path: Path) -> None:
    """The columns must be CURE_COLUMNS, in that order."""
    found = tuple(df.columns)
    if found == CURE_COLUMNS:
        return
    missing = [c for c in CURE_COLUMNS if c not in found]
    unexpected = [c for c in found if c not in CURE_COLUMNS]
    detail = []
    if missing:
        detail.append(f"missing {missing}")
    if unexpected:
        detail.append(f"unexpected {unexpected}")
    if not detail:
        detail.append(f"found them in the order {list(found)}")
    raise ValueError(
        f"{path}: the columns must be exactly kvcache_exp.columns.CURE_COLUMNS in that order; "
        + "; ".join(detail)
    )


def _cure_numbers(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Every column but the text ones as numbers; a value that is not one is an error."""
    df = df.copy()
    for name in CURE_COLUMNS:
        if name in _CURE_TEXT_COLUMNS:
            continue
        values = pd.to_numeric(df[name], errors="coerce")
        bad = values.isna() & df[name].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{path}: column {name} must be numeric, found {df[name].iloc[row]!r} "
                f"in data row {row + 1}"
            )
        df[name] = values.astype(float)
    return df


def _check_cure_rows(df: pd.DataFrame, path: Path) -> None:
    """Known cure names, the keys present, True/False flags, sizes matching the file name."""
    names = df["cure"].fillna("").astype(str)
    unknown = sorted({n for n in names if not is_known(n)})
    if unknown:
        raise ValueError(
            f"{path}: unknown cure(s) {unknown}; expected hit, miss, shift, "
            "shift_tail_<r> or shift_head_<r> with 0 < r <= 1, server_cache_reuse, or "
            "cached_vs_full"
        )
    for name in _CURE_KEY_COLUMNS:
        missing = np.flatnonzero(~np.isfinite(df[name].to_numpy(dtype=float)))
        if missing.size:
            rows = [int(i) + 1 for i in missing]
            raise ValueError(f"{path}: column {name} is empty in data row(s) {rows}")
    flags = verified_flags(df["cache_verified"])
    if flags.isna().any():
        row = int(np.flatnonzero(flags.isna().to_numpy())[0])
        raise ValueError(
            f"{path}: cache_verified must be True or False, found "
            f"{df['cache_verified'].iloc[row]!r} in data row {row + 1}"
        )
    named = _sizes_in_name(path)
    if named and len(df):
        for part, size in named.items():
            sizes = set(df[f"size_{part}"].astype(int))
            if sizes != {size}:
                raise ValueError(
                    f"{path}: the name says size_{part} = {size}, the rows say {sorted(sizes)}"
                )
