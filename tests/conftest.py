"""Shared fixtures: the real embedded model, fetched once by the project's own code."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def default_model_entry() -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    return config["models"][config["model"]]


def engine_threads(default: int) -> int:
    """llama.cpp's threads for the tests' engines: ``KVCACHE_TEST_THREADS`` when set.
    ``make mutation`` sets 1, as it runs one test process per core: llama.cpp's threads
    wait by spinning, and two processes of two threads on two cores slow down manyfold."""
    return int(os.environ.get("KVCACHE_TEST_THREADS") or default)


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The embedded default model, fetched into the repository's models/ like `make run` does."""
    from kvcache_exp.models.catalog import ensure_model

    entry = default_model_entry()
    return ensure_model(entry, REPO / "models" / entry["file"])


@pytest.fixture(scope="session")
def engine(model_path: Path):
    """The in-process engine on the embedded model, for the tests that need llama.cpp."""
    from kvcache_exp.engines.base import EngineSettings
    from kvcache_exp.engines.llama_cpp_python import LlamaCppPython

    threads = engine_threads(os.cpu_count() or 1)
    settings = EngineSettings(n_ctx=512, n_batch=512, n_threads=threads, n_gpu_layers=0, seed=42)
    eng = LlamaCppPython(model_path, settings)
    yield eng
    eng.close()


@pytest.fixture()
def tokenize(engine):
    return engine.tokenize


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A throwaway one-node SLURM cluster with one "GPU" for the module (about a second to
    start once installed), skipped with the reason where it cannot be made."""
    from slurm_cluster import SlurmUnavailable, throwaway_cluster

    try:
        with throwaway_cluster(tmp_path_factory.mktemp("cluster"), gpus=1) as running:
            yield running
    except SlurmUnavailable as exc:
        pytest.skip(f"no throwaway SLURM cluster: {exc}")
