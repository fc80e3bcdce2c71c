"""llama.cpp's own ``llama-server`` as a child process that is always cleaned up.

The server engine compares llama-cpp-python with the HTTP server that llama.cpp itself
ships (built by ``make server`` from the same vendored source). A measurement must never
talk to a stale server, to a server some other program started, or leave one running
after it ends, so this module owns the whole life of one server (which is why it is a
little over 400 lines: finding the binary, its command line, start, wait and stop belong
together; its HTTP is :mod:`.http_client`'s):

* it starts ``llama-server`` on 127.0.0.1 only, on a port that was free a moment before
  (a port taken in between makes the server fail to bind; we then try another);
* the server writes its log to a file, so that every error can quote the log's tail;
* it waits until ``GET /health`` answers 200, and fails with one clear error when the
  binary is missing, when the server exits early (bad model file, bad flag) or when it
  is not healthy in time;
* on exit (also on an exception or KeyboardInterrupt) it sends SIGTERM, then SIGKILL
  after a grace period, and reaps the process. On Linux the child also gets SIGKILL
  from the kernel if the Python process dies without running its clean-up
  (``PR_SET_PDEATHSIG``), e.g. when a job scheduler kills it.

Defaults that matter for the KV-cache measurement (checked against llama-server built
from llama-cpp-python 0.3.36, llama.cpp commit 0c1e570):

* ``--parallel 1``: one slot, like the single-sequence cache of llama-cpp-python;
* ``--cache-ram 0``: no host-memory prompt cache. With the server's default (8192 MiB)
  a prompt whose prefix is no longer in the slot is restored from RAM: after [A,B], an
  unrelated prompt C, then [A,B,Q], the server reported ``cache_n`` 400, not 0;
* ``--slot-save-path <private dir>``: ``POST /slots/0?action=erase`` (empty the slot's
  KV cache) answers 501 without it;
* ``--no-webui``: nothing but the API.

Not set here, and worth setting explicitly by the caller: ``flash_attn`` (the server's
default ``auto`` turns it on, also on the CPU) and never ``n_cache_reuse`` in a request
unless KV shifting is wanted: the request field alone turns reuse on, without
``--cache-reuse``.

Requests to the server go through its :attr:`ManagedServer.client`
(:class:`~kvcache_exp.engines.http_client.HTTPClient`), the same client every server
engine uses; a request that meets a dead server raises :class:`ServerExitedError` with
the log's tail.

Standard library only, so that it runs wherever the package does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvcache_exp.engines.base import EngineError
from kvcache_exp.engines.http_client import HTTPClient, ServerNotReadyError, log_tail

ENV_VAR = "KVCACHE_LLAMA_SERVER"
"""Environment variable with the path of the ``llama-server`` binary to use."""

BINARY_NAME = "llama-server"
HOST = "127.0.0.1"

# src/kvcache_exp/engines/managed_server.py -> the repository (for an editable install).
_REPO = Path(__file__).resolve().parents[3]

# How many ports we try when the free port we picked is taken before the server binds it.
_BIND_ATTEMPTS = 3
_BIND_FAILURE = "couldn't bind HTTP server socket"


class ServerError(EngineError):
    """The server could not be found, started, or kept running; the message says why."""


class ServerNotFoundError(ServerError):
    """No ``llama-server`` binary: the message says to run ``make server``."""


class ServerExitedError(ServerError):
    """The server process ended while we still needed it (crash, kill, bad arguments)."""


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _build_candidates(root: Path) -> list[Path]:
    """``llama-server`` binaries under ``root/build``: the stable link first, then newest."""
    stable = root / "build" / "llama.cpp" / "bin" / BINARY_NAME
    others = sorted(
        (p for p in root.glob("build/llama.cpp-*/bin/" + BINARY_NAME) if _is_executable(p)),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    return [stable, *others]


def find_llama_server(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The ``llama-server`` binary to run.

    Looked up in this order, the first that exists wins: ``explicit``; the environment
    variable ``KVCACHE_LLAMA_SERVER``; ``build/llama.cpp/bin/llama-server`` (the link
    ``make server`` updates) and other ``build/llama.cpp-*/bin/llama-server`` under the
    repository and under the working directory; ``llama-server`` on ``PATH``. An explicit
    path or the environment variable that names no executable is an error rather than a
    reason to fall back, because silently running another build would mix up results.
    """
    for given, origin in ((explicit, "the given path"), (os.environ.get(ENV_VAR), ENV_VAR)):
        if given:
            path = Path(given).expanduser()
            if not _is_executable(path):
                raise ServerNotFoundError(
                    f"llama-server: {path} ({origin}) is not an executable file; "
                    "build it with `make server` or point to an existing binary"
                )
            return path.resolve()

    looked: list[Path] = []
    for root in dict.fromkeys((_REPO, Path.cwd().resolve())):
        for candidate in _build_candidates(root):
            looked.append(candidate)
            if _is_executable(candidate):
                return candidate.resolve()
    on_path = shutil.which(BINARY_NAME)
    if on_path:
        return Path(on_path).resolve()
    where = ", ".join(str(p) for p in dict.fromkeys(looked))
    raise ServerNotFoundError(
        f"llama-server not found (looked at {where}, ${ENV_VAR} and PATH). "
        "Build it with `make server` (llama.cpp from the llama-cpp-python sdist, "
        "about 12 minutes on 2 cores), or set "
        f"{ENV_VAR} to a llama-server binary."
    )


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: have the kernel SIGKILL it when its parent dies.

    This is the backstop for a parent that dies without running its clean-up (SIGKILL,
    or Python's default SIGTERM action). Note that the signal fires when the *thread*
    that started the server ends, so start servers from a thread that outlives them.
    """
    pr_set_pdeathsig = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)


class ManagedServer:
    """A ``llama-server`` on 127.0.0.1, started on ``__enter__`` and stopped on ``__exit__``.

    >>> with ManagedServer("models/m.gguf", threads=2, n_ctx=2048) as server:  # doctest: +SKIP
    ...     server.client.post_json("/completion", {"prompt": [1, 2, 3], "n_predict": 1})

    ``flash_attn`` is ``"on"``, ``"off"``, ``"auto"`` or a bool; ``cache_type_k`` and
    ``cache_type_v`` are llama.cpp type names (``f16``, ``q8_0``, ...). None leaves the
    server's default. ``extra_args`` go last on the command line (e.g.
    ``["--cache-reuse", "256"]``). ``log_path`` None writes the log into a private
    temporary folder, removed on exit unless the exit is an error (which names the log).
    ``slot_save`` False leaves out ``--slot-save-path``, as a server started by hand
    often is: it then cannot erase its slot (to test that a run refuses such a server).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        binary: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        threads_batch: int | None = None,
        n_ctx: int = 2048,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        n_gpu_layers: int = 0,
        flash_attn: str | bool | None = None,
        cache_type_k: str | None = None,
        cache_type_v: str | None = None,
        cache_ram_mib: int | None = 0,
        slot_save: bool = True,
        extra_args: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 120.0,
        stop_grace: float = 10.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self._binary_arg = binary
        self.threads = threads or os.cpu_count() or 1
        self.threads_batch = threads_batch or self.threads
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.n_ubatch = n_ubatch
        self.n_gpu_layers = n_gpu_layers
        self.flash_attn = flash_attn
        self.cache_type_k = cache_type_k
        self.cache_type_v = cache_type_v
        self.cache_ram_mib = cache_ram_mib
        self.slot_save = slot_save
        self.extra_args = list(extra_args)
        self._given_log_path = Path(log_path) if log_path is not None else None
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.env = env

        self.binary: Path | None = None
        self.port: int | None = None
        self.log_path: Path | None = None
        self.command: list[str] = []
        self.client: HTTPClient | None = None
        self.props: dict[str, Any] = {}
        self.startup_s: float | None = None
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._started_at = 0.0

    # -- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> ManagedServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        # Keep the log of a failure; an interrupt (Ctrl-C, SystemExit) is no failure.
        self.stop(keep_files=exc_type is not None and issubclass(exc_type, Exception))

    def start(self) -> None:
        """Start the server and wait until it is healthy; on any failure nothing is left."""
        if self._proc is not None:
            raise ServerError("llama-server: already started")
        self.binary = find_llama_server(self._binary_arg)
        if not self.model_path.is_file():
            raise ServerError(f"llama-server: the model file {self.model_path} does not exist")
        self._workdir = Path(tempfile.mkdtemp(prefix="kvcache-llama-server-"))
        (self._workdir / "slots").mkdir()
        self.log_path = self._given_log_path or self._workdir / "server.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            for attempt in range(1, _BIND_ATTEMPTS + 1):
                try:
                    self._launch()
                    self._wait_healthy()
                    break
                except ServerExitedError:
                    if attempt < _BIND_ATTEMPTS and _BIND_FAILURE in log_tail(self.log_path):
                        self._reap()
                        continue  # the port was taken in between: another one
                    raise
            self.props = self._read_props()
        except BaseException as err:
            self.stop(keep_files=isinstance(err, Exception))
            raise

    def _arguments(self) -> list[str]:
        assert self.binary is not None and self._workdir is not None and self.port is not None
        args = [
            str(self.binary),
            "--model", os.path.abspath(self.model_path),
            "--host", HOST,
            "--port", str(self.port),
            "--parallel", "1",
            "--ctx-size", str(self.n_ctx),
            "--batch-size", str(self.n_batch),
            "--threads", str(self.threads),
            "--threads-batch", str(self.threads_batch),
            # Always explicit: a GPU build offloads every layer by default. (A CPU build
            # logs "no usable GPU found, --gpu-layers option will be ignored".)
            "--n-gpu-layers", str(self.n_gpu_layers),
            "--no-webui",
        ]  # fmt: skip
        if self.slot_save:
            args += ["--slot-save-path", str(self._workdir / "slots")]
        if self.n_ubatch is not None:
            args += ["--ubatch-size", str(self.n_ubatch)]
        if self.flash_attn is not None:
            value = self.flash_attn
            if isinstance(value, bool):
                value = "on" if value else "off"
            args += ["--flash-attn", value]
        if self.cache_type_k is not None:
            args += ["--cache-type-k", self.cache_type_k]
        if self.cache_type_v is not None:
            args += ["--cache-type-v", self.cache_type_v]
        if self.cache_ram_mib is not None:
            args += ["--cache-ram", str(self.cache_ram_mib)]
        return args + self.extra_args

    def _launch(self) -> None:
        assert self.log_path is not None
        self.port = free_port()
        self.command = self._arguments()
        self.returncode = None
        with open(self.log_path, "ab") as log:
            log.write(f"# {' '.join(self.command)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the terminal reaches only us, and we stop
                # the server in order (and its process group, should it ever fork).
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                env={**os.environ, **self.env} if self.env else None,
            )
        self._started_at = time.monotonic()
        self.client = HTTPClient(self.base_url, process=self)

    def _wait_healthy(self) -> None:
        """Wait until ``/health`` says ready (503 while the model loads), through the
        one readiness wait every server engine uses."""
        assert self.client is not None
        try:
            self.startup_s = self.client.wait_ready(
                self.startup_timeout,
                started=self._started_at,
                retry_unreachable=True,
                check=lambda: self._raise_if_exited("while starting"),
            )
        except ServerNotReadyError as err:
            raise ServerError(
                f"llama-server was not healthy within {self.startup_timeout:g} s "
                f"(last /health: {err.last}); log {self.log_path}:\n{log_tail(self.log_path)}"
            ) from err

    def _read_props(self) -> dict[str, Any]:
        assert self.client is not None
        answer = self.client.request("GET", "/props", timeout=10.0)
        return answer.body if answer.ok and isinstance(answer.body, dict) else {}

    def stop(self, keep_files: bool = False) -> int | None:
        """Stop the server (SIGTERM, SIGKILL after ``stop_grace`` s); return its exit code.

        Safe to call more than once. The private folder (slot files, and the log when no
        ``log_path`` was given) is removed unless ``keep_files``, which the context
        manager and :meth:`start` set on an error (not on Ctrl-C) so that the log the
        error names can still be read.
        """
        try:
            self._reap()
        finally:
            if self._workdir is not None:
                log_inside = self.log_path is not None and self._workdir in self.log_path.parents
                if not keep_files or not log_inside:
                    shutil.rmtree(self._workdir, ignore_errors=True)
                    self._workdir = None
        return self.returncode

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                self._signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_grace)
                except subprocess.TimeoutExpired:
                    self._signal_group(proc, signal.SIGKILL)
                    proc.wait()
        except BaseException:
            # Interrupted while waiting (a second Ctrl-C): never leave the server behind.
            if proc.poll() is None:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait()
            raise
        finally:
            self.returncode = proc.returncode

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        """Signal the server's process group (it leads it: its own session); the pid is
        not reused because we have not reaped it yet."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            proc.send_signal(sig)

    # -- state --------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The server's process id while it is running (None before start and after stop)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def label(self) -> str:
        """The server, for messages: ``llama-server (managed, pid 123) at http://...``."""
        return f"llama-server (managed, pid {self.pid}) at {self.base_url}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        if self.port is None:
            raise ServerError("llama-server: not started")
        return f"http://{HOST}:{self.port}"

    @property
    def build_info(self) -> str | None:
        """The server's build, e.g. ``b1-0c1e570``, as ``/props`` reports it."""
        value = self.props.get("build_info")
        return str(value) if value is not None else None

    def is_running(self) -> bool:
        """Whether the process is still alive (does not ask the server anything)."""
        return self._proc is not None and self._proc.poll() is None

    def check_alive(self) -> None:
        """Raise :class:`ServerExitedError` (with the log's tail) if the server has died."""
        self._raise_if_exited("while in use")

    def _raise_if_exited(self, when: str) -> None:
        if self._proc is None:
            raise ServerExitedError("llama-server: not running (not started, or stopped)")
        code = self._proc.poll()
        if code is not None:
            self.returncode = code
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            raise ServerExitedError(
                f"llama-server exited {when} ({how}); command: {' '.join(self.command)}\n"
                f"log {self.log_path}:\n{log_tail(self.log_path)}"
            )
