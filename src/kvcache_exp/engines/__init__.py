"""Engines: what the trial protocol talks to (llama-cpp-python in-process, or a server).

:func:`open_engine` opens the one the settings name; what every engine shares (the
interface, its settings, the capabilities it declares) is in :mod:`.base`. Each engine
is one module: :mod:`.llama_cpp_python` in-process, :mod:`.openai_http` for a server
(llama-server through :mod:`.llama_server`, or any OpenAI-compatible one).
"""

from kvcache_exp.engines.base import (
    Capability,
    Engine,
    EngineError,
    EngineSettings,
    verification_gap,
)
from kvcache_exp.engines.open import open_engine

__all__ = [
    "Capability",
    "Engine",
    "EngineError",
    "EngineSettings",
    "open_engine",
    "verification_gap",
]
