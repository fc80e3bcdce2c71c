"""The one HTTP client for every server the package talks to.

The server engine, the llama-server this package starts (:mod:`.managed_server`), the
tests and the benchmarks all talk to a server through :class:`HTTPClient`: where it
listens (:class:`Endpoint`), one request function, JSON decoding, one readiness wait,
and one way of turning a failure into a message. That message names the server, the
request and the server's answer; for a server we started it also says whether the
process died, and quotes the tail of its log.

Standard library only (``http.client``), so that it runs wherever the package does.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kvcache_exp.engines.base import EngineError

#: What a request can raise below HTTP: refused, reset, timed out, a broken answer.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


def decode(raw: bytes) -> Any:
    """A body as JSON when it is JSON, else as text."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", errors="replace")


def short(value: Any, limit: int = 600) -> str:
    """A body for a message, cut at ``limit`` characters."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def error_text(err: BaseException) -> str:
    """A transport failure in words (a refused connection is the usual one)."""
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (nothing listens there: is the server running?)"
    if isinstance(err, TimeoutError | socket.timeout):
        return "no answer in time"
    return f"{type(err).__name__}: {err}"


class ServerHTTPError(EngineError):
    """The server answered with an HTTP error status (``status``, decoded ``body``)."""

    def __init__(self, message: str, status: int, body: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class ServerNotReadyError(EngineError):
    """``GET /health`` did not say ready in time (``reachable``), or nothing listened."""

    def __init__(self, last: str, reachable: bool) -> None:
        super().__init__(last)
        self.last = last
        self.reachable = reachable


@dataclass(frozen=True)
class Endpoint:
    """Where a server listens: scheme, host, port and an optional path prefix."""

    scheme: str
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, base_url: str) -> Endpoint:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise EngineError(f"server.base_url must look like http://host:port, got {base_url!r}")
        # An OpenAI client's base URL ends in /v1; our paths already carry it.
        prefix = url.path.rstrip("/").removesuffix("/v1")
        port = url.port or (443 if url.scheme == "https" else 80)
        return cls(url.scheme, url.hostname, port, prefix)

    def connection(self, timeout: float | None) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=timeout)

    def url(self, path: str = "") -> str:
        default = 443 if self.scheme == "https" else 80
        port = "" if self.port == default else f":{self.port}"
        return f"{self.scheme}://{self.host}{port}{self.prefix}{path}"


@dataclass(frozen=True)
class Response:
    """One HTTP answer: its status and its body, decoded from JSON when it is JSON."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class ServerProcess(Protocol):
    """A server process this package started (:class:`.managed_server.ManagedServer`),
    as far as a failed request needs it."""

    label: str
    log_path: Path | None

    def is_running(self) -> bool: ...

    def check_alive(self) -> None:
        """Raise an :class:`EngineError` that says how the process ended, if it did."""


def log_tail(path: Path | None, max_lines: int = 40, max_bytes: int = 16_384) -> str:
    """The last lines of a log file (empty when there is none), to quote in errors."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-max_lines:])


class HTTPClient:
    """Requests to one server, outside any timed region, with one kind of error.

    ``process`` is the server's process when this package started it: a failed request
    then says whether it died, and quotes its log. ``timeout_s`` is the default time a
    request may take.
    """

    def __init__(
        self, base_url: str, *, timeout_s: float = 600.0, process: ServerProcess | None = None
    ) -> None:
        self.endpoint = Endpoint.parse(base_url)
        self.base_url = self.endpoint.url()
        self.timeout_s = float(timeout_s)
        self.process = process
        #: Whether a request failed (a managed server then keeps its log on stop).
        self.failed = False

    @property
    def label(self) -> str:
        """The server, for messages: ``llama-server (managed, pid 123) at http://...``."""
        return self.process.label if self.process is not None else f"the server at {self.base_url}"

    def connect(self, timeout: float | None = None) -> http.client.HTTPConnection:
        """An open connection (for a streamed call, opened before its timer starts)."""
        return self.endpoint.connection(timeout or self.timeout_s)

    def send(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> Response:
        """One request; transport errors are raised as they are (see :meth:`request`)."""
        conn = self.connect(timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, self.endpoint.prefix + path, body=payload, headers=headers)
            answer = conn.getresponse()
            return Response(answer.status, decode(answer.read()))
        finally:
            conn.close()

    def request(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> Response:
        """One request; a transport failure becomes :meth:`failure`'s error."""
        try:
            return self.send(method, path, body, timeout)
        except TRANSPORT_ERRORS as err:
            raise self.failure(f"{method} {path}", err) from err

    def json(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        """A request that must succeed (2xx); its decoded body, else
        :class:`ServerHTTPError`."""
        answer = self.request(method, path, body, timeout)
        if not answer.ok:
            raise self.failure(f"{method} {path}", answer=answer)
        return answer.body

    def get_json(self, path: str, timeout: float | None = None) -> Any:
        return self.json("GET", path, timeout=timeout)

    def post_json(self, path: str, body: Any, timeout: float | None = None) -> Any:
        return self.json("POST", path, body if body is not None else {}, timeout)

    def failure(
        self, request: str, err: BaseException | None = None, answer: Response | None = None
    ) -> EngineError:
        """One clear error for a failed request: the server, the request and its answer
        (an HTTP status: :class:`ServerHTTPError`), and for a server we started whether
        it died (its own error, e.g. ``ServerExitedError``) and its log's tail."""
        self.failed = True
        process = self.process
        if process is not None:
            for _ in range(20):  # let the kernel report the exit of a server that just died
                if not process.is_running():
                    break
                time.sleep(0.05)
            try:
                process.check_alive()
            except EngineError as dead:
                return type(dead)(f"{request} to {self.label} failed: {dead}")
        what = (
            f"answered HTTP {answer.status}: {short(answer.body)}"
            if answer is not None
            else f"failed: {error_text(err) if err else 'unknown error'}"
        )
        message = f"{self.label}: {request} {what}"
        if process is not None and process.log_path is not None:
            message += f"\nlog {process.log_path}:\n{log_tail(process.log_path, 20)}"
        if answer is not None and not answer.ok:
            return ServerHTTPError(message, answer.status, answer.body)
        return EngineError(message)

    def wait_ready(
        self,
        timeout_s: float,
        *,
        started: float | None = None,
        retry_unreachable: bool = False,
        check: Callable[[], None] | None = None,
        poll_s: float = 0.05,
    ) -> float:
        """Wait while ``GET /health`` answers 503 (the server loads its model); return
        the seconds since ``started`` (default: now) when it answers anything else (200,
        or 404 from a server without ``/health``: it answers, so it is up).

        Nothing listening raises :class:`ServerNotReadyError` at once, unless
        ``retry_unreachable`` (a server we just started may not listen yet); still 503,
        or unreachable, after ``timeout_s`` raises it too. ``check`` runs before each
        poll (for a server we started: raise when its process has died).
        """
        start = time.monotonic() if started is None else started
        deadline = start + timeout_s
        last = "no answer yet"
        while True:
            if check is not None:
                check()
            try:
                answer = self.send("GET", "/health", timeout=min(10.0, max(timeout_s, 1.0)))
            except TRANSPORT_ERRORS as err:
                last = f"GET /health failed: {error_text(err)}"
                if not retry_unreachable:
                    raise ServerNotReadyError(last, reachable=False) from err
            else:
                if answer.status != 503:
                    return time.monotonic() - start
                last = f"HTTP 503: {short(answer.body)}"
            if time.monotonic() >= deadline:
                raise ServerNotReadyError(last, reachable=True)
            time.sleep(poll_s)
