"""How each server empties its prefix cache before a trial (``server.cache_clear``).

Clearing is the server's business: each server has its own request, and a server that
refuses it stops the run with its answer, rather than letting warm caches be measured as
cold ones. A server with no such request at all (llama-cpp-python's own server) can be
run with ``none``: nothing is sent, nothing proves a trial starts cold, and so the run
needs ``require_cache_verified: false`` (its rows are written unverified).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvcache_exp.engines.base import EngineError

#: The slot every request uses on llama-server (a managed server has exactly one).
SLOT = 0

#: ``server.cache_clear: none``: the server is sent no clearing request.
NONE = "none"


@dataclass(frozen=True)
class CacheClear:
    """The request that empties a server's prefix cache, and what to do when it fails.

    ``method`` None: no request (:data:`NONE`).
    """

    method: str | None
    path: str
    hint: str = ""
    source: str = ""

    @property
    def sends(self) -> bool:
        """Whether there is a request to send at all."""
        return self.method is not None


#: How each server empties its prefix cache. Only llama-server's was tried here; vLLM's
#: and SGLang's are what their projects' documentation states (see ``source``).
CACHE_CLEAR_PRESETS: dict[str, CacheClear] = {
    "llama_server": CacheClear(
        "POST",
        f"/slots/{SLOT}?action=erase",
        hint=(
            "start llama-server with --slot-save-path DIR (the erase action answers 501 "
            "without it) and --cache-ram 0 (otherwise it restores prefixes from host memory)"
        ),
        source=(
            "llama.cpp tools/server/README.md, POST /slots/{id_slot}?action=erase; "
            "tested here on llama-server b1-0c1e570"
        ),
    ),
    "vllm": CacheClear(
        "POST",
        "/reset_prefix_cache",
        hint=(
            "start vLLM with the environment variable VLLM_SERVER_DEV_MODE=1 (the route is "
            "only mounted in development mode)"
        ),
        source=(
            "vLLM API reference, vllm/entrypoints/serve/cache/api_router.py "
            "(POST /reset_prefix_cache, attached only when VLLM_SERVER_DEV_MODE); untested here"
        ),
    ),
    "sglang": CacheClear(
        "POST",
        "/flush_cache",
        hint="SGLang flushes only while no request is running or waiting",
        source=(
            "SGLang documentation, Native APIs: /flush_cache (GET or POST, 200 when "
            "flushed, 400 otherwise); untested here"
        ),
    ),
    NONE: CacheClear(
        None,
        "",
        hint="no clearing request: nothing proves a trial starts with a cold cache",
        source=(
            "for servers without one, e.g. llama-cpp-python's `python -m llama_cpp.server` "
            "(0.3.36 has no cache-clearing route)"
        ),
    ),
}


def cache_clear_request(spec: str | Mapping[str, Any]) -> CacheClear:
    """The clearing request for a preset name or a ``{method, path}`` mapping."""
    if isinstance(spec, str):
        if spec not in CACHE_CLEAR_PRESETS:
            raise EngineError(
                f"server.cache_clear: unknown preset {spec!r} (known: "
                f"{', '.join(CACHE_CLEAR_PRESETS)}, or a mapping {{method, path}})"
            )
        return CACHE_CLEAR_PRESETS[spec]
    method, path = str(spec.get("method", "POST")).upper(), str(spec.get("path", ""))
    if not path.startswith("/"):
        raise EngineError(f"server.cache_clear: path must start with '/', got {path!r}")
    return CacheClear(method, path, hint="check server.cache_clear", source="the configuration")
