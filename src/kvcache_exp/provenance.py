"""What produced each number: the code, the machine, the engine build, the job.

A TTFT means little without what it was measured on. Each experiment job writes its own
record beside its CSVs (``results/run_phase3b_a{A}_b{B}.json``); ``run_metadata.json``
gathers them; and the summary refuses to pool configurations measured under different
code, builds, thread counts or hosts, since their differences would then be read as
effects of the cache.
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from kvcache_exp.models.files import describe_model
from kvcache_exp.outputs import atomic_open

PACKAGE_DIR = Path(__file__).resolve().parent

#: Provenance fields that must agree between configurations before they are pooled,
#: as (section, key) pairs of an experiment's record.
POOLING_KEYS: tuple[tuple[str, str], ...] = (
    ("code", "package_sha256"),
    ("model", "sha256"),
    ("machine", "host"),
    ("engine", "engine"),
    ("engine", "llama_cpp_python"),
    ("engine", "llama_cpp_system_info"),
    ("engine", "layers_offloaded"),
    ("engine", "n_threads"),
    ("engine", "n_batch"),
    ("engine", "flash_attn"),
    ("engine", "cache_type_k"),
    ("engine", "cache_type_v"),
    ("engine", "server"),
)


def package_files() -> list[Path]:
    """The package's source files (and its schema), in a fixed order."""
    files = [p for p in PACKAGE_DIR.rglob("*") if p.suffix in (".py", ".yaml") and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(PACKAGE_DIR).as_posix())


def package_sha256() -> str:
    """One hash of every source file of the package: equal hashes, equal code."""
    digest = hashlib.sha256()
    for path in package_files():
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _module_files(name: str) -> list[Path]:
    """The files that importing module ``name`` (``kvcache_exp.x.y``) executes: every
    package's ``__init__.py`` on the way down, then the module itself (None found: [])."""
    parts = name.split(".")[1:]
    found = [PACKAGE_DIR / "__init__.py"]
    for depth in range(1, len(parts) + 1):
        base = PACKAGE_DIR.joinpath(*parts[:depth])
        if (base / "__init__.py").is_file():
            found.append(base / "__init__.py")
        elif base.with_suffix(".py").is_file() and depth == len(parts):
            found.append(base.with_suffix(".py"))
        else:
            return []
    return found


def _imports(path: Path) -> set[Path]:
    """The files of what ``path`` imports anywhere (functions' deferred imports too: they
    run): ``kvcache_exp`` modules, including the ``from package import module`` form,
    and modules beside ``path`` (a workflow script's ``adapter``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    found: set[Path] = set()
    for name in names:
        if name.split(".")[0] == "kvcache_exp":
            found.update(_module_files(name))
        elif (beside := path.with_name(f"{name}.py")).is_file() and beside != path:
            found.add(beside)
    return found


def imported_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files a script runs besides itself: every package module it imports, directly
    or through other modules, each package's ``__init__.py``, the modules beside it that
    it imports (a workflow script's adapter), and the data files beside the package's
    modules (the configuration schema). Sorted.

    The workflow makes these the rules' code inputs, so that editing any module a job
    runs reruns that job and no other; computing them from the imports means no rule
    can miss one.
    """
    seen: set[Path] = set()
    pending = [Path(path)]
    while pending:
        for found in _imports(pending.pop()):
            if found not in seen:
                seen.add(found)
                pending.append(found)
    data = {
        p
        for f in seen
        if PACKAGE_DIR in f.parents
        for p in f.parent.iterdir()
        if p.suffix == ".yaml" and p.is_file()
    }
    return sorted(seen | data)


def _git(*args: str) -> str | None:
    """Output of a git command in the package's folder, or None without git or a repo."""
    exe = shutil.which("git")
    if not exe:
        return None
    try:
        proc = subprocess.run(
            [exe, "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """The git commit the code came from (when it is a checkout) and a hash of the package."""
    status = _git("status", "--porcelain", "--", ".")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "package_sha256": package_sha256(),
        "package_dir": str(PACKAGE_DIR),
        "python": sys.version.split()[0],
    }


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


def machine() -> dict[str, Any]:
    """The host and, under SLURM, the job; CPU and GPUs."""
    return {
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpus": gpu_names(),
        "platform": platform.platform(),
    }


def now() -> tuple[str, float]:
    """The time now, as an ISO 8601 UTC string and as Unix seconds."""
    moment = dt.datetime.now(dt.UTC)
    return moment.isoformat(), moment.timestamp()


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_open(path) as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _get(record: dict[str, Any], section: str, key: str) -> Any:
    return (record.get(section) or {}).get(key)


def pooling_problems(records: dict[str, dict[str, Any]]) -> list[str]:
    """Why the configurations in ``records`` (label -> record) may not be pooled.

    One sentence per field that differs, naming the configurations on each side.
    """
    problems = []
    for section, key in POOLING_KEYS:
        groups: dict[str, list[str]] = {}
        for label, record in records.items():
            value = json.dumps(_get(record, section, key), sort_keys=True, default=str)
            groups.setdefault(value, []).append(label)
        if len(groups) > 1:
            sides = "; ".join(
                f"{', '.join(labels)}: {json.loads(value)!r}" for value, labels in groups.items()
            )
            problems.append(f"{section}.{key} differs between configurations ({sides})")
    return problems


def gather(
    records: dict[str, dict[str, Any]], model_name: str, config: dict[str, Any]
) -> dict[str, Any]:
    """``run_metadata.json``: the run's model, software and hardware, and every job.

    The model, software and hardware sections describe the first configuration's job;
    ``pooling`` lists what differs between jobs (empty when they all agree).
    """
    if not records:
        raise ValueError("gather: no experiment records")
    first = next(iter(records.values()))
    engine = dict(first.get("engine") or {})
    where = first.get("machine") or {}
    software_keys = ("engine", "llama_cpp_python", "llama_cpp_system_info", "server")
    software = {k: engine.pop(k) for k in software_keys if k in engine}
    try:
        import snakemake

        software["snakemake"] = snakemake.__version__
    except ImportError:
        pass
    software["python"] = (first.get("code") or {}).get("python")
    software["platform"] = where.get("platform")
    software["code"] = {k: v for k, v in (first.get("code") or {}).items() if k != "python"}
    hardware = {
        "host": where.get("host"),
        "cpu": where.get("cpu"),
        "cpu_count": where.get("cpu_count"),
        "gpus": where.get("gpus"),
        **engine,
    }
    jobs = {
        label: {
            key: record.get(key)
            for key in ("host", "slurm_job_id", "n_threads", "started_at", "finished_at")
        }
        for label, record in records.items()
    }
    return {
        "model": {"name": model_name, **(first.get("model") or {})},
        "software": software,
        "hardware": hardware,
        "experiments": jobs,
        "pooling": pooling_problems(records),
        "config": config,
    }


def write_run_metadata(
    record_paths: list[str | os.PathLike[str]],
    out_json: str | os.PathLike[str],
    model_name: str,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Gather the experiments' records into ``run_metadata.json`` (:func:`gather`), the
    file the rule and the command line both write; return what was written."""
    records = {Path(p).stem: read_json(p) for p in record_paths}
    data = gather(records, model_name, config)
    write_json(out_json, data)
    return data


def job_record(
    model_path: Path,
    settings: dict[str, Any],
    n_threads: int,
    engine_info: dict[str, Any],
    started: tuple[str, float],
    finished: tuple[str, float],
) -> dict[str, Any]:
    """What every measuring job records of itself: where (host, SLURM job, machine),
    when (ISO time and Unix seconds), its settings, the engine's build, the model (with
    its sha256) and the code version. The experiment and the conversation replay add
    what names their job."""
    where = machine()
    return {
        "host": where["host"],
        "slurm_job_id": where["slurm_job_id"],
        "n_threads": n_threads,
        "started_at": started[0],
        "finished_at": finished[0],
        "start_unix": started[1],
        "end_unix": finished[1],
        "settings": settings,
        "machine": where,
        "engine": engine_info,
        "model": describe_model(model_path) if model_path.is_file() else {"path": str(model_path)},
        "code": code_version(),
    }
