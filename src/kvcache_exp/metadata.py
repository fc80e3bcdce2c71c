"""What the numbers were measured on: model, software, hardware, configuration.

A TTFT means little without the machine and build behind it, so the workflow records
them in ``results/run_metadata.json``. The offloaded layer count is read from
llama.cpp's own load log rather than inferred from the settings: a CPU-only build
silently ignores ``n_gpu_layers``.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import llama_cpp

from kvcache_exp import models
from kvcache_exp.outputs import atomic_open

_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


def cpu_name() -> str:
    """The CPU's model name (Linux), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    """NVIDIA GPUs seen by nvidia-smi; empty when there is none (or no driver)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def offloaded_layers(model_path: Path, n_gpu_layers: int) -> dict[str, Any]:
    """Load the model as the experiment does and read llama.cpp's offload report."""
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def _collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(_collect, ctypes.c_void_p(0))
    try:
        llm = llama_cpp.Llama(str(model_path), n_gpu_layers=n_gpu_layers, n_ctx=256, verbose=True)
        llm.close()
    finally:
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))
    match = _OFFLOADED.search("".join(lines))
    return {
        "layers_offloaded": int(match.group(1)) if match else 0,
        "layers_total": int(match.group(2)) if match else None,
        "offload_log": match.group(0) if match else "no offload reported (CPU build or 0 layers)",
    }


def collect(
    model_path: Path, model_name: str, config: dict[str, Any], n_threads: int
) -> dict[str, Any]:
    """Everything worth knowing to compare this run with another."""
    meta = models.gguf_metadata(model_path)
    arch = meta.get("general.architecture")
    file_type = meta.get("general.file_type")
    try:
        import gguf

        quantization = gguf.LlamaFileType(file_type).name if file_type is not None else None
    except (ImportError, ValueError):
        quantization = str(file_type)
    import snakemake

    return {
        "model": {
            "name": model_name,
            "path": str(model_path),
            "size_bytes": model_path.stat().st_size,
            "sha256": models.cached_sha256(model_path),
            "architecture": arch,
            "quantization": quantization,
            "general_name": meta.get("general.name"),
            "context_length": meta.get(f"{arch}.context_length"),
            "block_count": meta.get(f"{arch}.block_count"),
        },
        "software": {
            "llama_cpp_python": llama_cpp.__version__,
            "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
            "snakemake": snakemake.__version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "hardware": {
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "gpus": gpu_names(),
            "gpu_offload_supported": bool(llama_cpp.llama_supports_gpu_offload()),
            "n_gpu_layers_requested": config.get("n_gpu_layers"),
            **offloaded_layers(model_path, int(config.get("n_gpu_layers", 0))),
            "n_threads": n_threads,
        },
        "config": config,
    }


def write(path: Path, data: dict[str, Any]) -> None:
    with atomic_open(path) as fh:
        json.dump(data, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")
