"""The experiment against an OpenAI-compatible server that is not llama-server:
llama-cpp-python's own ``python -m llama_cpp.server``, tried as a new user would, with
``engine: openai_http`` and ``api: openai``.

That server has no ``/tokenize``, takes only text in ``/v1/completions``, reports no
cached-token counts and has no request that clears its cache. Nothing is mocked: the
server runs as a real subprocess on a free loopback port with the embedded model, and
these tests check that

* the engine tokenizes on the client with the model's own vocabulary (the GGUF), sends
  text that the server reads back as exactly the design's tokens, and says what it can
  and cannot do (its capabilities);
* a run that requires verified trials stops before the first trial with one error that
  names ``require_cache_verified: false``; with that setting false, a small experiment
  completes, every row unverified with the reason;
* without a local GGUF, the error names ``model``.

Skipped, with the reason, where the server's extra dependencies are not installed
(``pip install -e '.[test]'`` installs them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from workflow_copy import small_config

from kvcache_exp.columns import RESULT_COLUMNS
from kvcache_exp.config.settings import check_engine, merge
from kvcache_exp.engines import Capability, EngineError
from kvcache_exp.engines.http_client import HTTPClient, ServerNotReadyError
from kvcache_exp.engines.managed_server import free_port
from kvcache_exp.engines.openai_http import OpenAIHTTP
from kvcache_exp.measure.experiment import run_experiment
from kvcache_exp.measure.prompts import build_prompts
from kvcache_exp.paths import ConfigurationFiles, Layout

#: What ``python -m llama_cpp.server`` imports beyond llama-cpp-python itself.
SERVER_DEPENDENCIES = (
    "fastapi",
    "uvicorn",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
)
THREADS = min(2, os.cpu_count() or 1)
SIZES = {"size_a": 48, "size_b": 24}


def _missing() -> list[str]:
    return [name for name in SERVER_DEPENDENCIES if importlib.util.find_spec(name) is None]


@pytest.fixture(scope="module")
def llama_cpp_server(model_path: Path, tmp_path_factory) -> Iterator[str]:
    """``python -m llama_cpp.server`` with the embedded model; its base URL."""
    missing = _missing()
    if missing:
        pytest.skip(f"llama_cpp.server needs {', '.join(missing)}: pip install -e '.[test]'")
    port = free_port()
    log = tmp_path_factory.mktemp("llama-cpp-server") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "512", "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS),
        "--verbose", "False",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        # The one readiness wait: it has no /health, so its 404 says it is up.
        HTTPClient(url).wait_ready(120.0, retry_unreachable=True, check=lambda: _alive(proc, log))
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _alive(proc: subprocess.Popen, log: Path) -> None:
    if proc.poll() is not None:
        raise ServerNotReadyError(f"llama_cpp.server exited:\n{log.read_text()[-3000:]}", False)


def settings_for(url: str, **values):
    config = {**small_config(), "max_tokens": 8, "quality_tokens": 8, "keep_tokens": 4}
    config.update(trials=1, engine="openai_http", **values)
    config["server"] = {"base_url": url, "api": "openai", **values.get("server", {})}
    config.pop("experiments", None)
    return merge(config, SIZES, n_threads=THREADS)


def outputs(tmp: Path) -> ConfigurationFiles:
    """The four files of the a64_b32 configuration, laid out as the workflow does."""
    return Layout(results=str(tmp / "results"), prompts=str(tmp / "prompts")).configuration(
        "a64_b32"
    )


def test_client_side_tokens_reach_the_server_unchanged(llama_cpp_server: str, engine, model_path):
    """The server has no /tokenize and takes no token ids: the engine tokenizes with the
    GGUF as the in-process engine does, and the server reads the text it sends as
    exactly those tokens (its own usage.prompt_tokens)."""
    remote = OpenAIHTTP(llama_cpp_server, api="openai", cache_clear="none", model_file=model_path)
    try:
        assert remote.capabilities == frozenset()  # no clear, no counts, no tokenize, no ids
        prompts = build_prompts(remote.tokenize, 48, 24, 16, size_s=4)
        for name in ("warmup", "hit", "miss"):
            tokens = prompts.tokens(name)
            assert engine.tokenize(prompts.text(name)) == tokens
            body = remote.dialect.body(remote._prompt(tokens), 1, stream=False)
            answer = remote.client.post_json("/v1/completions", body)
            assert answer["usage"]["prompt_tokens"] == len(tokens)
        described = remote.describe()["server"]
        assert described["tokenizer"].startswith("client") and described["prompts"] == "text"
        assert described["cached_counts"] is False
        assert remote.position_correction() == "rope"
    finally:
        remote.close()


def test_a_run_that_requires_verified_trials_stops_before_the_first(
    llama_cpp_server: str, model_path: Path, tmp_path: Path
) -> None:
    settings = settings_for(llama_cpp_server)
    assert settings.require_cache_verified
    with pytest.raises(EngineError) as caught:
        run_experiment(model_path, settings, outputs(tmp_path))
    message = str(caught.value)
    assert "reports no cached-token counts" in message
    assert "require_cache_verified: false" in message
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing was measured


def test_an_unverified_run_completes_with_the_reason(
    llama_cpp_server: str, model_path: Path, tmp_path: Path, caplog
) -> None:
    settings = settings_for(
        llama_cpp_server, require_cache_verified=False, server={"cache_clear": "none"}
    )
    assert check_engine({**settings.as_dict()}) == []
    results_csv, prompts_csv, record_json, cures_csv = outputs(tmp_path)
    with caplog.at_level("WARNING"):
        run_experiment(model_path, settings, outputs(tmp_path))
    warnings = [r.getMessage() for r in caplog.records if "cannot be cache-verified" in r.message]
    assert len(warnings) == 1 and "server.cache_clear: none" in warnings[0]

    df = pd.read_csv(results_csv)
    assert list(df.columns) == list(RESULT_COLUMNS)
    assert sorted(df["condition"]) == ["hit", "miss"]
    assert not df["cache_verified"].any()
    assert df["cache_note"].str.contains("nothing shows the cache was empty").all()
    assert (df["ttft_ms"] > 0).all() and (df["completion_tokens"] > 0).all()
    prompts = pd.read_csv(prompts_csv).set_index("prompt_name")
    assert prompts.loc["hit", "token_count"] == 4 + 48 + 24 + 16
    assert prompts["sample_output"].fillna("").str.len().gt(0).all()
    engine = json.loads(record_json.read_text())["engine"]
    assert engine["engine"] == "openai_http"
    assert engine["server"]["kind"] == "OpenAI-compatible"
    assert engine["server"]["prompts"] == "text" and engine["server"]["cache_clear"] == "none"
    assert Capability.CACHED_COUNTS.value not in engine["capabilities"]
    assert pd.read_csv(cures_csv).empty  # no cure is defined for the OpenAI API


def test_a_server_without_a_clearing_route_is_told_about_none(
    llama_cpp_server: str, model_path: Path, tmp_path: Path
) -> None:
    """The default clearing request (llama-server's) meets a 404: the run stops before
    its first trial, and the error says what to set."""
    settings = settings_for(llama_cpp_server, require_cache_verified=False)
    with pytest.raises(EngineError) as caught:
        run_experiment(model_path, settings, outputs(tmp_path))
    message = str(caught.value)
    assert "cannot clear its cache: POST /slots/0?action=erase answered HTTP 404" in message
    assert "server.cache_clear" in message and "to none where it has none" in message
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_without_a_local_gguf_the_error_names_the_setting(llama_cpp_server: str, tmp_path):
    with pytest.raises(EngineError) as caught:
        OpenAIHTTP(llama_cpp_server, api="openai", model_file=tmp_path / "absent.gguf")
    message = str(caught.value)
    assert "has no /tokenize (POST /tokenize answered HTTP 404)" in message
    assert "`model`" in message and "absent.gguf" in message


def test_cache_clear_none_needs_unverified_timing() -> None:
    """A configuration check: no clearing request means no verified trial."""
    config = {"engine": "openai_http", "server": {"base_url": "http://x:1", "cache_clear": "none"}}
    (problem,) = check_engine(config)
    assert problem.startswith("server.cache_clear: none") and "require_cache_verified" in problem
    assert check_engine({**config, "require_cache_verified": False}) == []
