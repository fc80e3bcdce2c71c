"""Shared fixtures: the real embedded model, fetched once by the project's own code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def default_model_entry() -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    return config["models"][config["model"]]


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The embedded default model, fetched into the repository's models/ like `make run` does."""
    from kvcache_exp.models import ensure_model

    entry = default_model_entry()
    return ensure_model(entry, REPO / "models" / entry["file"])


@pytest.fixture(scope="session")
def llm(model_path: Path):
    """One loaded model for the tests that need llama.cpp itself (loading takes a second)."""
    import llama_cpp

    model = llama_cpp.Llama(
        model_path=str(model_path),
        n_ctx=512,
        n_threads=os.cpu_count() or 1,
        n_gpu_layers=0,
        seed=42,
        verbose=False,
    )
    yield model
    model.close()


@pytest.fixture()
def tokenize(llm):
    def _tokenize(text: str) -> list[int]:
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    return _tokenize
