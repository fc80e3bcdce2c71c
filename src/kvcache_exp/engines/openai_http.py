"""An inference server over HTTP: llama-server's native API or an OpenAI-compatible one.

The same trial protocol that times llama-cpp-python in-process times a server here, so
that a user can ask what dropping old messages costs on their own deployment. What this
module guarantees, and why:

* **Exact prompts.** Prompts are sent as token ids, tokenized beforehand by the server's
  own ``/tokenize`` (without BOS), so that the server evaluates exactly the tokens the
  design lays out; a text prompt would be tokenized again, with a BOS and a chat
  template perhaps, and a "hit" could differ from the warm-up in its first token.
* **TTFT is the first streamed token.** Every call streams (server-sent events). The
  prepared call opens its TCP connection before the timer starts (llama-server closes
  the connection after each streamed answer, so there is no keep-alive to reuse); the
  timed :meth:`_StreamCall.run` sends the request and returns at the first event, which
  the server sends after the prefill and one sampled token. The rest of the stream (the
  final event with the server's counts and timings) is read by ``result()``, untimed.
* **The server's own counts.** Verification uses what the server reports: llama-server's
  ``timings.cache_n`` / ``timings.prompt_n`` (native API, and beside ``usage`` in its
  OpenAI API), or ``usage.prompt_tokens_details.cached_tokens`` (vLLM with
  ``--enable-prompt-tokens-details``, SGLang with ``--enable-cache-report``). A count the
  server does not report stays unknown, and the trial then cannot be verified.
* **Clearing the cache is the server's business.** Each server empties its prefix cache
  with its own request (:data:`CACHE_CLEAR_PRESETS`); a server that refuses stops the run
  with its answer, rather than letting warm caches be measured as cold ones.
* **One clear error.** Every transport failure, HTTP error or malformed answer becomes an
  :class:`~kvcache_exp.engines.base.EngineError` that names the server, the request and
  the server's answer (and, for a server we started, the tail of its log).

What the counts mean (llama-server b1-0c1e570, checked in tests/test_server_engine.py):
``prompt_n`` is how many prompt tokens were evaluated and ``cache_n`` how many were
reused; ``predicted_n`` counts every sampled token, the end-of-generation token included,
and each sampled token but the last is then evaluated alone. So a call evaluates
``prompt_n + predicted_n - 1`` tokens, as llama-cpp-python's counters say in-process.
With ``n_predict`` 1, ``prompt_ms`` includes the first token's logits.

Standard library only (``http.client``).
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvcache_exp.engines.base import CallResult, EngineError
from kvcache_exp.engines.managed_server import ManagedServer, ServerError, log_tail

#: ``api``: llama-server's native ``/completion``, or the OpenAI ``/v1/completions``.
APIS: tuple[str, ...] = ("llama_server", "openai")

#: The slot every request uses on llama-server (a managed server has exactly one).
SLOT = 0


@dataclass(frozen=True)
class CacheClear:
    """The request that empties a server's prefix cache, and what to do when it fails."""

    method: str
    path: str
    hint: str = ""
    source: str = ""


#: How each server empties its prefix cache. Only llama-server's was tried here; the
#: others are what their projects' documentation states (see ``source``).
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


@dataclass(frozen=True)
class _Endpoint:
    """Where the server listens: scheme, host, port and an optional path prefix."""

    scheme: str
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, base_url: str) -> _Endpoint:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise EngineError(f"server.base_url must look like http://host:port, got {base_url!r}")
        prefix = url.path.rstrip("/")
        # An OpenAI client's base URL ends in /v1; our paths already carry it.
        prefix = prefix.removesuffix("/v1")
        port = url.port or (443 if url.scheme == "https" else 80)
        return cls(url.scheme, url.hostname, port, prefix)

    def connection(self, timeout: float | None) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=timeout)

    def url(self, path: str = "") -> str:
        default = 443 if self.scheme == "https" else 80
        port = "" if self.port == default else f":{self.port}"
        return f"{self.scheme}://{self.host}{port}{self.prefix}{path}"


_TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", errors="replace")


def _short(value: Any, limit: int = 600) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _error_text(err: BaseException) -> str:
    """A transport failure in words (a refused connection is the usual one)."""
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (nothing listens there: is the server running?)"
    if isinstance(err, TimeoutError | socket.timeout):
        return "no answer in time"
    return f"{type(err).__name__}: {err}"


@dataclass
class _StreamCall:
    """One streamed completion, connected and encoded before the timer starts.

    :meth:`run` (timed) sends the request and reads until the first event (a first-token
    call) or to the end of the stream (a generation); :meth:`result` reads whatever is
    left, parses the events and maps the server's counts to a :class:`CallResult`.
    """

    engine: OpenAIHTTP
    path: str
    payload: bytes
    prompt: list[int]
    max_tokens: int
    conn: http.client.HTTPConnection
    lines: list[bytes] = field(default_factory=list)
    response: http.client.HTTPResponse | None = None
    status: int = 0
    error_body: Any = None

    @property
    def request_name(self) -> str:
        return f"POST {self.path} ({len(self.prompt)} prompt tokens, max {self.max_tokens})"

    def run(self) -> None:
        try:
            self.conn.request(
                "POST", self.engine.endpoint.prefix + self.path, body=self.payload,
                headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
            )  # fmt: skip
            resp = self.conn.getresponse()
            self.response, self.status = resp, resp.status
            if resp.status != 200:
                self.error_body = _decode(resp.read())
                return
            to_end = self.max_tokens > 1
            while True:
                line = resp.readline()
                if not line:
                    return
                if line.startswith((b"data:", b"error:")):
                    self.lines.append(line)
                    if not to_end:
                        return
        except _TRANSPORT_ERRORS as err:
            self.conn.close()
            raise self.engine.failure(self.request_name, err) from err

    def _read_rest(self) -> None:
        resp = self.response
        if resp is None:
            return
        try:
            while line := resp.readline():
                if line.startswith((b"data:", b"error:")):
                    self.lines.append(line)
        except _TRANSPORT_ERRORS as err:
            raise self.engine.failure(self.request_name, err) from err
        finally:
            self.conn.close()

    def events(self) -> list[dict[str, Any]]:
        """The stream's JSON events; an error event or status raises EngineError."""
        self._read_rest()
        if self.status != 200:
            raise self.engine.failure(self.request_name, answer=(self.status, self.error_body))
        found = []
        for line in self.lines:
            head, _, rest = line.partition(b":")
            body = rest.strip()
            if body == b"[DONE]":
                continue
            event = _decode(body)
            if head == b"error" or (isinstance(event, dict) and "error" in event):
                raise self.engine.failure(self.request_name, answer=(self.status, event))
            if not isinstance(event, dict):
                raise self.engine.failure(
                    self.request_name, answer=(self.status, f"not a JSON event: {_short(body)}")
                )
            found.append(event)
        if not found:
            raise self.engine.failure(self.request_name, answer=(self.status, "an empty stream"))
        return found

    def result(self) -> CallResult:
        events = self.events()
        if self.engine.api == "llama_server":
            return self.engine._native_result(events, self.max_tokens)
        return self.engine._openai_result(events, self.max_tokens)


def _number(mapping: Mapping[str, Any] | None, key: str) -> float | None:
    if not mapping:
        return None
    value = mapping.get(key)
    return float(value) if isinstance(value, int | float) else None


class OpenAIHTTP:
    """An inference server behind HTTP, as the trial protocol's engine.

    ``api`` is ``llama_server`` (llama-server's native ``/completion``) or ``openai``
    (``/v1/completions``). ``cache_clear`` is a preset name of
    :data:`CACHE_CLEAR_PRESETS` or a ``{method, path}`` mapping. ``managed`` is the
    :class:`ManagedServer` this engine stops on :meth:`close` (None: an external server,
    which is left running). Construction contacts the server: it waits while the server
    answers 503 (loading), up to ``startup_timeout_s``, and fails at once when nothing
    listens.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api: str = "llama_server",
        cache_clear: str | Mapping[str, Any] = "llama_server",
        request_timeout_s: float = 600.0,
        startup_timeout_s: float = 120.0,
        managed: ManagedServer | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        if api not in APIS:
            raise EngineError(f"server.api must be one of {', '.join(APIS)}, got {api!r}")
        self.endpoint = _Endpoint.parse(base_url)
        self.base_url = self.endpoint.url()
        self.api = api
        self.cache_clear_spec = cache_clear
        self.clearing = cache_clear_request(cache_clear)
        self.request_timeout_s = float(request_timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self.managed = managed
        self.settings = dict(settings or {})
        self.name = "llama_server" if managed is not None else "openai_http"
        self.failed = False
        self._tokens: dict[str, list[int]] = {}
        self._wait_ready()
        self.props = self._optional_json("/props")
        self.is_llama_server = managed is not None or "build_info" in self.props
        self.model = model or (self._first_model() if api == "openai" else None)

    # -- errors -------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """The server, for messages: ``llama-server (managed, pid 123) at http://...``."""
        if self.managed is not None:
            return f"llama-server (managed, pid {self.managed.pid}) at {self.base_url}"
        return f"the server at {self.base_url}"

    def failure(
        self,
        request: str,
        err: BaseException | None = None,
        answer: tuple[int, Any] | None = None,
    ) -> EngineError:
        """One clear error for a failed request: the server, the request, its answer,
        and for a managed server whether it died and its log's tail."""
        self.failed = True
        if self.managed is not None:
            for _ in range(20):  # let the kernel report the exit of a server that just died
                if not self.managed.is_running():
                    break
                time.sleep(0.05)
            try:
                self.managed.check_alive()
            except ServerError as dead:
                return EngineError(f"{request} to {self.label} failed: {dead}")
        if answer is not None:
            what = f"answered HTTP {answer[0]}: {_short(answer[1])}"
        else:
            what = f"failed: {_error_text(err) if err else 'unknown error'}"
        message = f"{self.label}: {request} {what}"
        if self.managed is not None and self.managed.log_path is not None:
            message += f"\nlog {self.managed.log_path}:\n{log_tail(self.managed.log_path, 20)}"
        return EngineError(message)

    # -- plain requests -----------------------------------------------------------------

    def request(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> tuple[int, Any]:
        """One request outside any timed region; (status, decoded body)."""
        conn = self.endpoint.connection(timeout or self.request_timeout_s)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, self.endpoint.prefix + path, body=payload, headers=headers)
            answer = conn.getresponse()
            return answer.status, _decode(answer.read())
        except _TRANSPORT_ERRORS as err:
            raise self.failure(f"{method} {path}", err) from err
        finally:
            conn.close()

    def request_ok(self, method: str, path: str, body: Any = None) -> Any:
        """A request that must succeed (2xx); its decoded body."""
        status, answer = self.request(method, path, body)
        if not 200 <= status < 300:
            raise self.failure(f"{method} {path}", answer=(status, answer))
        return answer

    def _optional_json(self, path: str) -> dict[str, Any]:
        """``GET path`` when the server has it (``/props`` is llama-server's), else {}."""
        try:
            status, answer = self.request("GET", path, timeout=10.0)
        except EngineError:
            self.failed = False
            return {}
        return answer if status == 200 and isinstance(answer, dict) else {}

    def _wait_ready(self) -> None:
        """Wait while ``/health`` says the server is loading (503); fail at once when
        nothing listens, or when it is still not ready after ``startup_timeout_s``."""
        deadline = time.monotonic() + self.startup_timeout_s
        last = ""
        while True:
            conn = self.endpoint.connection(min(10.0, self.startup_timeout_s))
            try:
                conn.request("GET", self.endpoint.prefix + "/health")
                answer = conn.getresponse()
                status, body = answer.status, _decode(answer.read())
            except _TRANSPORT_ERRORS as err:
                raise EngineError(
                    f"cannot reach {self.label}: GET /health failed: {_error_text(err)}. "
                    "Start the server first (or use engine: llama_server, which starts one), "
                    "and check server.base_url"
                ) from err
            finally:
                conn.close()
            if status != 503:  # 200, or a server without /health (404): it answers
                return
            last = f"HTTP 503: {_short(body)}"
            if time.monotonic() >= deadline:
                raise EngineError(
                    f"{self.label} was not ready within server.startup_timeout_s="
                    f"{self.startup_timeout_s:g} s (last GET /health: {last})"
                )
            time.sleep(0.1)

    def _first_model(self) -> str:
        """The served model's name, for the OpenAI API's ``model`` field."""
        answer = self.request_ok("GET", "/v1/models")
        data = answer.get("data") if isinstance(answer, dict) else None
        if not data or not isinstance(data[0], dict) or "id" not in data[0]:
            raise self.failure("GET /v1/models", answer=(200, answer))
        return str(data[0]["id"])

    # -- the Engine interface -----------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """The server's tokens of ``text``, without BOS or special tokens (memoized: the
        prompt builder asks for the same words many times)."""
        if text in self._tokens:
            return list(self._tokens[text])
        if self.api == "llama_server" or self.is_llama_server:
            body: dict[str, Any] = {"content": text, "add_special": False}
        else:  # vLLM and SGLang: TokenizeCompletionRequest / their documented body
            body = {"prompt": text, "add_special_tokens": False}
            if self.model:
                body["model"] = self.model
        answer = self.request_ok("POST", "/tokenize", body)
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list):
            raise self.failure("POST /tokenize", answer=(200, answer))
        ids = [int(t["id"]) if isinstance(t, dict) else int(t) for t in tokens]
        self._tokens[text] = ids
        return list(ids)

    def detokenize(self, tokens: list[int]) -> str:
        if not tokens:
            return ""
        body: dict[str, Any] = {"tokens": list(tokens)}
        if self.model and not self.is_llama_server:
            body["model"] = self.model
        answer = self.request_ok("POST", "/detokenize", body)
        if isinstance(answer, dict):
            for key in ("content", "prompt", "text"):  # llama-server, vLLM, SGLang
                if isinstance(answer.get(key), str):
                    return answer[key]
        raise self.failure("POST /detokenize", answer=(200, answer))

    def clear(self) -> None:
        """Empty the server's prefix cache with its own request. A server shows no cache
        positions, so this returns None: the warm-up's reused token count (0 expected) is
        what proves the cache empty."""
        how = self.clearing
        status, answer = self.request(how.method, how.path, {} if how.method != "GET" else None)
        if not 200 <= status < 300:
            self.failed = True
            hint = (
                f"{how.hint}, or set server.cache_clear" if how.hint else "set server.cache_clear"
            )
            raise EngineError(
                f"{self.label} cannot clear its cache: {how.method} {how.path} answered HTTP "
                f"{status}: {_short(answer)}. Measuring on would time warm caches as cold "
                f"ones, so the run stops here: {hint}"
            )

    def _body(self, tokens: list[int], max_tokens: int, n_cache_reuse: int) -> dict[str, Any]:
        """The streamed, greedy request for ``tokens``; llama-server's own fields (slot,
        prompt cache, KV-shift reuse, 0 unless asked) only where the server is one."""
        native = {
            "cache_prompt": True,
            "id_slot": SLOT,
            # 0 explicitly: the request field alone turns KV shifting on, and a miss must
            # be a miss (the server cure sends a chunk size > 0).
            "n_cache_reuse": int(n_cache_reuse),
            "top_k": 1,
        }
        if self.api == "llama_server":
            return {
                "prompt": list(tokens),
                "n_predict": int(max_tokens),
                "stream": True,
                "temperature": 0.0,
                **native,
            }
        body: dict[str, Any] = {
            "prompt": list(tokens),
            "max_tokens": int(max_tokens),
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.0,
        }
        if self.model:
            body["model"] = self.model
        if self.is_llama_server:
            body.update(native)
        elif n_cache_reuse:
            raise EngineError("KV-shift reuse (n_cache_reuse) is a llama-server request field")
        return body

    def _prepare(self, tokens: list[int], max_tokens: int, n_cache_reuse: int) -> _StreamCall:
        if not tokens:
            raise EngineError("an engine call needs at least one prompt token")
        path = "/completion" if self.api == "llama_server" else "/v1/completions"
        payload = json.dumps(self._body(tokens, max_tokens, n_cache_reuse)).encode()
        conn = self.endpoint.connection(self.request_timeout_s)
        try:
            conn.connect()  # outside the timed region
        except _TRANSPORT_ERRORS as err:
            raise self.failure(f"POST {path}", err) from err
        return _StreamCall(self, path, payload, list(tokens), int(max_tokens), conn)

    def first_token(self, tokens: list[int], n_cache_reuse: int = 0) -> _StreamCall:
        """Evaluate what of ``tokens`` the server has not cached and sample one token;
        ``n_cache_reuse`` > 0 lets llama-server reuse cached chunks of at least that
        many tokens by shifting them (its ``--cache-reuse``)."""
        return self._prepare(tokens, 1, n_cache_reuse)

    def generation(self, tokens: list[int], max_tokens: int, n_cache_reuse: int = 0) -> _StreamCall:
        """At most ``max_tokens`` greedy tokens after ``tokens``, stopping at EOS."""
        return self._prepare(tokens, max_tokens, n_cache_reuse)

    # -- mapping the server's counts --------------------------------------------------

    @staticmethod
    def _strip_stop(tokens: list[int], generated: int | None, max_tokens: int) -> int | None:
        """Remove the end-of-generation token the stream carried (llama-server sends it
        as a last token event); return it. A one-token call keeps it, as in-process."""
        if max_tokens > 1 and tokens and generated is not None and len(tokens) == generated:
            return tokens.pop()
        return None

    def _native_result(self, events: list[dict[str, Any]], max_tokens: int) -> CallResult:
        """llama-server's ``/completion`` stream: tokens per event, counts at the end."""
        final = events[-1]
        if not final.get("stop"):
            raise self.failure("POST /completion", answer=(200, "the stream ended early"))
        timings = final.get("timings") or {}
        tokens = [int(t) for e in events for t in (e.get("tokens") or [])]
        generated = _number(timings, "predicted_n")
        n_generated = int(generated) if generated is not None else len(tokens)
        stop_type = str(final.get("stop_type", ""))
        finish = {"eos": "stop", "word": "stop", "limit": "length"}.get(stop_type, stop_type)
        stop = self._strip_stop(tokens, n_generated, max_tokens) if finish == "stop" else None
        return self._call_result(
            tokens,
            finish,
            prompt_n=_number(timings, "prompt_n"),
            cached=_number(timings, "cache_n"),
            n_generated=n_generated,
            timings=timings,
            extra={
                "tokens_cached": final.get("tokens_cached"),
                "tokens_evaluated": final.get("tokens_evaluated"),
                **({"stop_token": stop} if stop is not None else {}),
            },
        )

    def _openai_result(self, events: list[dict[str, Any]], max_tokens: int) -> CallResult:
        """``/v1/completions``: text per chunk, ``usage`` (and llama-server's ``timings``)
        in the last chunk. Token ids are not streamed by this API: the text is tokenized
        again by the server, which can differ from the generated ids where a boundary
        merges (such a trial then fails the warm-up check rather than passing wrongly)."""
        text = "".join(
            str(c.get("text") or "") for e in events for c in (e.get("choices") or [])[:1]
        )
        reasons = [c.get("finish_reason") for e in events for c in (e.get("choices") or [])[:1]]
        finish = next((str(r) for r in reversed(reasons) if r), "")
        usage = next((e["usage"] for e in reversed(events) if e.get("usage")), None) or {}
        timings = next((e["timings"] for e in reversed(events) if e.get("timings")), None) or {}
        details = usage.get("prompt_tokens_details") or {}
        cached = _number(timings, "cache_n")
        if cached is None:
            cached = _number(details, "cached_tokens")
        prompt_n = _number(timings, "prompt_n")
        prompt_tokens = _number(usage, "prompt_tokens")
        if prompt_n is None and prompt_tokens is not None:
            prompt_n = prompt_tokens - (cached or 0)
        generated = _number(timings, "predicted_n")
        if generated is None:
            generated = _number(usage, "completion_tokens")
        tokens = self.tokenize(text) if text else []
        n_generated = int(generated) if generated is not None else len(tokens)
        if max_tokens == 1 and n_generated == 1 and len(tokens) != 1:
            tokens = tokens[:1] or [-1]  # one token was sampled (EOS, or a partial char)
        return self._call_result(
            tokens,
            finish,
            prompt_n=prompt_n,
            cached=cached,
            n_generated=n_generated,
            timings=timings,
            extra={"usage": usage, "text": text},
        )

    @staticmethod
    def _call_result(
        tokens: list[int],
        finish: str,
        *,
        prompt_n: float | None,
        cached: float | None,
        n_generated: int,
        timings: Mapping[str, Any],
        extra: dict[str, Any],
    ) -> CallResult:
        prompt_ms = _number(timings, "prompt_ms")
        predicted_ms = _number(timings, "predicted_ms")
        engine_ms = (
            prompt_ms + predicted_ms
            if prompt_ms is not None and predicted_ms is not None
            else math.nan
        )
        return CallResult(
            tokens=tokens,
            finish_reason=finish,
            prefill_tokens=int(prompt_n) if prompt_n is not None else -1,
            prefill_ms=prompt_ms if prompt_ms is not None else math.nan,
            decode_tokens=max(n_generated - 1, 0),
            decode_ms=predicted_ms if predicted_ms is not None else math.nan,
            cached_tokens=int(cached) if cached is not None else None,
            engine_ms=engine_ms,
            extra={"server_timings": dict(timings), **extra},
        )

    # -- provenance and life cycle ----------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The engine for the run's record. ``server`` holds what must agree before
        configurations are pooled (build, API, model, clearing); the URL, command line
        and log path change from job to job and sit beside it."""
        props = self.props
        generation = props.get("default_generation_settings") or {}
        server = {
            "kind": "llama-server" if self.is_llama_server else "OpenAI-compatible",
            "build_info": props.get("build_info"),
            "api": self.api,
            "cache_clear": (
                self.cache_clear_spec
                if isinstance(self.cache_clear_spec, str)
                else dict(self.cache_clear_spec)
            ),
            "model": self.model or props.get("model_path"),
            "n_ctx": generation.get("n_ctx"),
            "total_slots": props.get("total_slots"),
            "managed": self.managed is not None,
        }
        info: dict[str, Any] = {"engine": self.name, "server": server, "server_url": self.base_url}
        if self.managed is not None:
            from kvcache_exp.engines.llama_cpp_python import offload_report

            info["server_command"] = " ".join(self.managed.command)
            info["server_log"] = str(self.managed.log_path)
            info["server_startup_s"] = self.managed.startup_s
            server["binary"] = str(self.managed.binary)
            log = self.managed.log_path.read_text(errors="replace") if self.managed.log_path else ""
            info.update(offload_report(log))
        info.update(self.settings)
        return info

    def close(self) -> None:
        """Stop a managed server (keeping its log after a failure); an external server
        is left as it was."""
        if self.managed is not None:
            self.managed.stop(keep_files=self.failed)


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
    engine gets: threads (prompt and generation), batch and micro-batch (llama-cpp-python
    sets ``n_ubatch = n_batch``), GPU layers, flash attention on/off (the server's
    default is ``auto``), and the KV cache types.
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
