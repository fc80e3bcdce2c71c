"""Model files on disk: their checksums, their format and their metadata.

A timing experiment is only comparable across machines when the model file is the same
byte for byte, so every catalog entry pins a sha256 and every model is checked before
use. These functions only read; fetching and moving files is :mod:`.catalog`'s job, and
it happens in a workflow rule, never while the workflow is parsed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

GGUF_MAGIC = b"GGUF"
#: Bytes read per ``read()`` call when hashing: fast, and little memory for GB-sized files.
CHUNK_SIZE = 1 << 20


class ModelError(RuntimeError):
    """A model file is missing, corrupt or cannot be fetched; the message says what to do."""


def sha256_file(path: Path | str, chunk: int = CHUNK_SIZE) -> str:
    """The sha256 of a file, read in chunks so that large models need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256.json")


def _stamp_key(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def remembered_sha256(path: Path) -> str | None:
    """The sha256 remembered beside ``path`` while its size and mtime have not changed.

    Reading only: the workflow checks the model each time it builds its DAG, and hashing
    hundreds of MB every time would make ``snakemake -n`` slow.
    """
    try:
        saved = json.loads(_stamp_path(path).read_text())
        key = _stamp_key(path)
        if {k: saved.get(k) for k in key} == key:
            return str(saved["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    return None


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, from the remembered value when it is still valid (reads only)."""
    return remembered_sha256(path) or sha256_file(path)


def remember_sha256(path: Path) -> str:
    """Hash ``path`` (unless remembered) and remember it beside the file, for later reads.

    Called by the rules that fetch or check a model, never while the workflow is parsed.
    """
    digest = file_sha256(path)
    # A read-only models folder only costs us the cache.
    with contextlib.suppress(OSError):
        _stamp_path(path).write_text(json.dumps({**_stamp_key(path), "sha256": digest}))
    return digest


def check_gguf(path: Path) -> None:
    """Fail clearly when ``path`` is missing, empty, or not a GGUF file at all."""
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != GGUF_MAGIC:
        raise ModelError(
            f"model file {path} is not a GGUF file (it starts with {head!r}, not b'GGUF'); "
            "llama-cpp-python reads only GGUF: convert the model or point `model` at a .gguf"
        )


def verify(path: Path, sha256: str | None) -> None:
    """Check that ``path`` is a GGUF file with the pinned ``sha256`` (when one is pinned)."""
    check_gguf(path)
    if sha256:
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise ModelError(
                f"model file {path} does not match its pinned sha256 (expected {sha256}, got "
                f"{actual}); the file is corrupt or truncated: delete it and run again to "
                "fetch it anew"
            )


_GGUF_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _read_value(fh: BinaryIO, vtype: int) -> Any:
    """Read one GGUF metadata value of type ``vtype`` (arrays are skipped, returning None)."""
    if vtype in _GGUF_SCALARS:
        fmt = _GGUF_SCALARS[vtype]
        return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]
    if vtype == _GGUF_STRING:
        (length,) = struct.unpack("<Q", fh.read(8))
        return fh.read(length).decode("utf-8", errors="replace")
    if vtype == _GGUF_ARRAY:
        itype, count = struct.unpack("<IQ", fh.read(12))
        if itype in _GGUF_SCALARS:
            fh.seek(count * struct.calcsize(_GGUF_SCALARS[itype]), os.SEEK_CUR)
        else:
            for _ in range(count):
                _read_value(fh, itype)
        return None
    raise ValueError(f"unknown GGUF value type {vtype}")


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The scalar key/value metadata of a GGUF file (arrays such as the vocabulary left out).

    A small reader of our own: the ``gguf`` package parses every tensor header too, which
    takes seconds, and the workflow reads this each time it builds its DAG.
    """
    check_gguf(path)
    meta: dict[str, Any] = {}
    with open(path, "rb") as fh:
        fh.seek(4)
        version, _n_tensors, n_kv = struct.unpack("<IQQ", fh.read(20))
        if version < 2:
            raise ModelError(f"model file {path} is GGUF version {version}; version 2+ is needed")
        for _ in range(n_kv):
            (klen,) = struct.unpack("<Q", fh.read(8))
            key = fh.read(klen).decode("utf-8", errors="replace")
            (vtype,) = struct.unpack("<I", fh.read(4))
            value = _read_value(fh, vtype)
            if value is not None:
                meta[key] = value
    return meta


def model_context_length(path: Path) -> int | None:
    """The context length the model was trained for, from its GGUF metadata."""
    meta = gguf_metadata(path)
    arch = meta.get("general.architecture")
    value = meta.get(f"{arch}.context_length")
    return int(value) if value is not None else None


def describe_model(path: Path) -> dict[str, Any]:
    """What a model file is: its hash, architecture, quantization and trained context."""
    meta = gguf_metadata(path)
    arch = meta.get("general.architecture")
    file_type = meta.get("general.file_type")
    try:
        import gguf

        quantization = gguf.LlamaFileType(file_type).name if file_type is not None else None
    except (ImportError, ValueError):
        quantization = None if file_type is None else str(file_type)
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "architecture": arch,
        "quantization": quantization,
        "general_name": meta.get("general.name"),
        "context_length": meta.get(f"{arch}.context_length"),
        "block_count": meta.get(f"{arch}.block_count"),
    }
