"""``engine: llama_server``: start llama.cpp's own server with the run's model and engine
settings, and talk to it through its native API (:class:`.openai_http.OpenAIHTTP`)."""

from __future__ import annotations

from pathlib import Path

from kvcache_exp.engines.managed_server import ManagedServer
from kvcache_exp.engines.openai_http import OpenAIHTTP


def start_llama_server(
    model_path: str | Path,
    *,
    threads: int,
    n_ctx: int,
    n_batch: int,
    n_gpu_layers: int,
    flash_attn: bool,
    cache_type_k: str,
    cache_type_v: str,
    startup_timeout_s: float = 120.0,
    request_timeout_s: float = 600.0,
    binary: str | Path | None = None,
    log_path: str | Path | None = None,
) -> OpenAIHTTP:
    """Start ``llama-server`` on 127.0.0.1 with the run's model and engine settings and
    return the engine that talks to it (and stops it on ``close``).

    Every setting that changes speed is passed explicitly, equal to what the in-process
    engine gets (:meth:`~kvcache_exp.engines.base.EngineSettings.server_args`): threads
    (prompt and generation), batch and micro-batch (llama-cpp-python sets ``n_ubatch =
    n_batch``), GPU layers, flash attention on/off (the server's default is ``auto``),
    and the KV cache types.
    """
    server = ManagedServer(
        model_path,
        binary=binary,
        threads=threads,
        threads_batch=threads,
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=n_batch,
        n_gpu_layers=n_gpu_layers,
        flash_attn=bool(flash_attn),
        cache_type_k=cache_type_k,
        cache_type_v=cache_type_v,
        log_path=log_path,
        startup_timeout=startup_timeout_s,
    )
    server.start()
    try:
        return OpenAIHTTP(
            server.base_url,
            api="llama_server",
            cache_clear="llama_server",
            request_timeout_s=request_timeout_s,
            startup_timeout_s=startup_timeout_s,
            managed=server,
            model_file=model_path,
            settings={
                "n_threads": threads,
                "n_batch": n_batch,
                "n_ctx": n_ctx,
                "n_gpu_layers_requested": n_gpu_layers,
                "flash_attn": bool(flash_attn),
                "cache_type_k": cache_type_k,
                "cache_type_v": cache_type_v,
            },
        )
    except BaseException:
        server.stop(keep_files=True)
        raise
