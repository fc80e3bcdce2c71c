"""Writing outputs so that a crash never leaves a half-written file under its final name.

The seed wrote each results CSV once, at the end, with ``flush()`` and ``os.fsync()``.
We do the same, into a temporary file in the same folder, and rename it into place:
a rename within one file system is atomic, so the final name holds either nothing or
the whole file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pandas as pd


class OutputError(OSError):
    """An output cannot be written (no permission, no space); the message names the path."""


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it to ``path``."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, mode, newline="" if "b" not in mode else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates the file 0600; give it the permissions of a normally created file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
        raise


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` as CSV to ``path`` atomically (flushed, fsync'd, renamed)."""
    with atomic_open(path) as fh:
        df.to_csv(fh, index=False)
