"""The one front door: open the engine the settings name (``engine``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kvcache_exp.engines.base import Engine, EngineError, EngineSettings

if TYPE_CHECKING:
    from pathlib import Path

    from kvcache_exp.config.settings import ExperimentSettings

log = logging.getLogger(__name__)


def open_engine(model_path: Path, settings: ExperimentSettings) -> Engine:
    """Load the model once per job, with the context and offload the settings ask for.

    ``engine`` picks the module: llama-cpp-python in-process, a llama-server this job
    starts with the same settings (stopped by ``close``), or a running server at
    ``server.base_url`` (``model_path`` is then the model's GGUF on this machine, if
    any: the tokenizer of a server without ``/tokenize``). A server that cannot be
    started or reached raises :class:`EngineError` with its reason, and a model file
    llama.cpp cannot load a :class:`~kvcache_exp.models.files.ModelError`, before
    anything is measured. The engine modules are imported here, when opened, so that
    a server run never loads what only the in-process engine needs.
    """
    engine_settings = EngineSettings.of(settings)
    server = settings.server
    if settings.engine == "llama_server":
        from kvcache_exp.engines.llama_server import start_llama_server

        log.info("starting llama-server for %s", model_path)
        return start_llama_server(
            model_path,
            **engine_settings.server_args(),
            startup_timeout_s=server.startup_timeout_s,
            request_timeout_s=server.request_timeout_s,
        )
    if settings.engine == "openai_http":
        from kvcache_exp.engines.openai_http import OpenAIHTTP

        if not server.base_url:
            raise EngineError("engine openai_http needs server.base_url")
        log.info("connecting to the server at %s", server.base_url)
        return OpenAIHTTP(
            server.base_url,
            model=server.model,
            api=server.api,
            cache_clear=server.cache_clear,
            request_timeout_s=server.request_timeout_s,
            startup_timeout_s=server.startup_timeout_s,
            model_file=model_path,
        )
    if settings.engine != "llama_cpp_python":
        raise EngineError(f"unknown engine {settings.engine!r}")
    from kvcache_exp.engines.llama_cpp_python import LlamaCppPython
    from kvcache_exp.models.files import ModelError

    try:
        return LlamaCppPython(model_path, engine_settings)
    except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
        size = model_path.stat().st_size if model_path.exists() else 0
        raise ModelError(
            f"llama.cpp could not load {model_path} ({size} bytes): {exc}. The file may be "
            "truncated or corrupt: delete it and fetch it again (catalog models are fetched "
            "by the workflow), or check that it is a model llama.cpp supports"
        ) from exc
