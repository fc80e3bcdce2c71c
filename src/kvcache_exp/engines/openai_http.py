"""An inference server over HTTP as the protocol's engine: llama-server's native API or
any OpenAI-compatible one.

The same trial protocol that times llama-cpp-python in-process times a server here, so
that a user can ask what dropping old messages costs on their own deployment. The parts
live in their own modules: the HTTP client (:mod:`.http_client`), the streamed call
(:mod:`.streaming`: TTFT is the first streamed token), the two APIs
(:mod:`.dialects`), the cache-clearing requests (:mod:`.cache_clear`), where tokens come
from (:mod:`.tokenizers`) and starting a llama-server (:mod:`.llama_server`). This
module puts them together and finds out, once at open and untimed, what the server can
do (:attr:`OpenAIHTTP.capabilities`):

* **Exact prompts.** Prompts are token ids, tokenized without BOS by the server's own
  ``/tokenize``, so that the server evaluates exactly the tokens the design lays out.
  A server without ``/tokenize`` gets its tokens from the model's GGUF on this machine;
  a server whose completions refuse token ids (llama-cpp-python's) gets text that reads
  back as exactly those tokens, and the count it reports for a probe prompt must agree.
* **The server's own counts.** Verification uses what the server reports (see
  :mod:`.dialects`). Whether it reports cached-token counts at all is probed at open,
  so that a run without them stops (or, with ``require_cache_verified: false``, warns)
  before its first trial instead of after all of them.
* **One clear error.** Every transport failure, HTTP error or malformed answer becomes an
  :class:`~kvcache_exp.engines.base.EngineError` that names the server, the request and
  the server's answer (and, for a server we started, the tail of its log).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kvcache_exp.engines.base import CallResult, Capability, EngineError, offload_report
from kvcache_exp.engines.cache_clear import cache_clear_request
from kvcache_exp.engines.dialects import ChatDialect, NativeDialect, check_api, dialect, number
from kvcache_exp.engines.http_client import (
    TRANSPORT_ERRORS,
    HTTPClient,
    Response,
    ServerNotReadyError,
    short,
)
from kvcache_exp.engines.managed_server import ManagedServer
from kvcache_exp.engines.streaming import StreamCall
from kvcache_exp.engines.tokenizers import (
    NO_ROUTE,
    ClientTokenizer,
    ServerTokenizer,
    open_tokenizer,
)

log = logging.getLogger(__name__)

#: The untimed prompt that finds out, at open, how the server takes and counts prompts.
PROBE_TEXT = " The cache probe reads these words back as tokens."


class OpenAIHTTP:
    """An inference server behind HTTP, as the trial protocol's engine.

    ``api`` is ``llama_server`` (llama-server's native ``/completion``) or ``openai``
    (``/v1/completions``). ``cache_clear`` is a preset name of
    :data:`~kvcache_exp.engines.cache_clear.CACHE_CLEAR_PRESETS` or a ``{method, path}``
    mapping. ``managed`` is the :class:`ManagedServer` this engine stops on
    :meth:`close` (None: an external server, which is left running). ``model_file`` is
    the model's GGUF on this machine, if any: the tokenizer of a server without
    ``/tokenize``, and what a KV shift can correct. Construction contacts the server: it
    waits while the server answers 503 (loading), up to ``startup_timeout_s``, fails at
    once when nothing listens, and probes the server (untimed).
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
        model_file: str | Path | None = None,
    ) -> None:
        check_api(api)
        self.clearing = cache_clear_request(cache_clear)
        self.cache_clear_spec = cache_clear
        if managed is not None and managed.client is not None:
            self.client = managed.client
            self.client.timeout_s = float(request_timeout_s)
        else:
            self.client = HTTPClient(base_url, timeout_s=request_timeout_s)
        self.base_url = self.client.base_url
        self.api = api
        self.startup_timeout_s = float(startup_timeout_s)
        self.managed = managed
        self.settings = dict(settings or {})
        self.model_file = Path(model_file) if model_file else None
        self.name = "llama_server" if managed is not None else "openai_http"
        self._tokens: dict[str, list[int]] = {}
        self._texts: dict[tuple[int, ...], str] = {}
        if managed is None:
            self._wait_ready()
        self.props = self._optional_json("/props")
        self.is_llama_server = managed is not None or "build_info" in self.props
        self.model = model or (self._first_model() if api == "openai" else None)
        self.dialect = dialect(api, model=self.model, llama_server=self.is_llama_server)
        self.tokenizer = open_tokenizer(self.client, self.dialect, self.model_file)
        self.token_prompts, self.reports_cached, self.server_bos = True, True, False
        try:
            if not isinstance(self.dialect, NativeDialect):  # llama-server's always are
                self._probe()
        except BaseException:
            self.tokenizer.close()
            raise
        self.capabilities = frozenset(
            cap
            for cap, has in (
                (Capability.CACHE_CLEAR, self.clearing.sends),
                (Capability.CACHED_COUNTS, self.reports_cached),
                (Capability.SERVER_CACHE_REUSE, isinstance(self.dialect, NativeDialect)),
                (Capability.SERVER_TOKENIZE, not isinstance(self.tokenizer, ClientTokenizer)),
                (Capability.TOKEN_PROMPTS, self.token_prompts),
                (Capability.SERVER_CHAT, self.is_llama_server),
            )
            if has
        )

    @property
    def label(self) -> str:
        """The server, for messages."""
        return self.client.label

    # -- opening --------------------------------------------------------------------

    def _wait_ready(self) -> None:
        """Wait while ``/health`` says the server is loading (503); fail at once when
        nothing listens, or when it is still not ready after ``startup_timeout_s``."""
        try:
            self.client.wait_ready(self.startup_timeout_s, poll_s=0.1)
        except ServerNotReadyError as err:
            if not err.reachable:
                raise EngineError(
                    f"cannot reach {self.label}: {err.last}. Start the server first (or use "
                    "engine: llama_server, which starts one), and check server.base_url"
                ) from err
            raise EngineError(
                f"{self.label} was not ready within server.startup_timeout_s="
                f"{self.startup_timeout_s:g} s (last GET /health: {err.last})"
            ) from err

    def _optional_json(self, path: str) -> dict[str, Any]:
        """``GET path`` when the server has it (``/props`` is llama-server's), else {}."""
        try:
            answer = self.client.send("GET", path, timeout=10.0)
        except TRANSPORT_ERRORS:
            return {}
        return answer.body if answer.ok and isinstance(answer.body, dict) else {}

    def _first_model(self) -> str:
        """The served model's name, for the OpenAI API's ``model`` field."""
        answer = self.client.json("GET", "/v1/models")
        data = answer.get("data") if isinstance(answer, dict) else None
        if not data or not isinstance(data[0], dict) or "id" not in data[0]:
            raise self.client.failure("GET /v1/models", answer=Response(200, answer))
        return str(data[0]["id"])

    def _probe(self) -> None:
        """One untimed, non-streamed completion of :data:`PROBE_TEXT`: does the server
        take token ids (else text, which only the client's tokenizer can check), does it
        read the prompt as our tokens (a BOS before text prompts is allowed, when the
        model asks for it), and does it report cached-token counts?"""
        tokens = self.tokenize(PROBE_TEXT)
        path = self.dialect.path
        answer = self.client.request("POST", path, self.dialect.body(tokens, 1, stream=False))
        if not answer.ok:
            if not isinstance(self.tokenizer, ClientTokenizer):
                raise self.client.failure(f"POST {path} (a prompt of token ids)", answer=answer)
            refused = answer
            text = self.tokenizer.as_text(tokens)
            answer = self.client.request("POST", path, self.dialect.body(text, 1, stream=False))
            if not answer.ok:
                raise self.client.failure(
                    f"POST {path} (token ids answered HTTP {refused.status}: "
                    f"{short(refused.body, 200)}; then as text)",
                    answer=answer,
                )
            self.token_prompts = False
            log.info("%s takes no token ids in %s: prompts go as text", self.label, path)
        result = self.dialect.result([answer.body], 1, self.tokenize)
        self.reports_cached = result.cached_tokens is not None
        counted = number(result.extra.get("usage"), "prompt_tokens")
        if counted is not None and counted != len(tokens):
            adds_bos = isinstance(self.tokenizer, ClientTokenizer) and self.tokenizer.vocab.adds_bos
            if self.token_prompts or not adds_bos or counted != len(tokens) + 1:
                raise EngineError(
                    f"{self.label} read the probe prompt ({len(tokens)} tokens) as "
                    f"{int(counted)} tokens: it does not evaluate the tokens the design lays "
                    "out (another model or tokenizer than the GGUF `model` names?)"
                )
            self.server_bos = True
            log.warning(
                "%s puts a BOS token before every text prompt (the model asks for one): "
                "each prompt then starts with it, like one more kept token",
                self.label,
            )

    # -- the Engine interface -----------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Tokens of ``text`` without BOS or special tokens (memoized: the prompt builder
        asks for the same words many times)."""
        if text not in self._tokens:
            self._tokens[text] = self.tokenizer.tokenize(text)
        return list(self._tokens[text])

    def detokenize(self, tokens: list[int]) -> str:
        return self.tokenizer.detokenize(list(tokens)) if tokens else ""

    def clear(self) -> None:
        """Empty the server's prefix cache with its own request (none with
        ``server.cache_clear: none``). A server shows no cache positions, so this returns
        None: the warm-up's reused token count (0 expected) is what proves it empty."""
        how = self.clearing
        if how.method is None:
            return
        answer = self.client.request(how.method, how.path, {} if how.method != "GET" else None)
        if not answer.ok:
            self.client.failed = True
            if answer.status in NO_ROUTE:
                hint = (
                    "the server has no such route: set server.cache_clear to its own clearing "
                    "request, or to none where it has none (then nothing proves a cold cache, "
                    "which needs require_cache_verified: false)"
                )
            elif how.hint:
                hint = f"{how.hint}, or set server.cache_clear"
            else:
                hint = "set server.cache_clear"
            raise EngineError(
                f"{self.label} cannot clear its cache: {how.method} {how.path} answered HTTP "
                f"{answer.status}: {short(answer.body)}. Measuring on would time warm caches "
                f"as cold ones, so the run stops here: {hint}"
            )

    def _prompt(self, tokens: list[int]) -> list[int] | str:
        """``tokens`` in the form the server takes (token ids, or text checked to read
        back as them; memoized, the same prompts return every trial)."""
        if self.token_prompts or not isinstance(self.tokenizer, ClientTokenizer):
            return list(tokens)
        key = tuple(tokens)
        if key not in self._texts:
            self._texts[key] = self.tokenizer.as_text(list(tokens))
        return self._texts[key]

    def _parse(self, n_prompt: int, max_tokens: int) -> Any:
        def parse(events: list[dict[str, Any]]) -> CallResult:
            result = self.dialect.result(events, max_tokens, self.tokenize)
            counted = number(result.extra.get("usage"), "prompt_tokens")
            expected = n_prompt + int(self.server_bos)
            if not self.token_prompts and counted is not None and counted != expected:
                raise EngineError(
                    f"{self.label} read a text prompt of {n_prompt} tokens as {int(counted)}"
                )
            return result

        return parse

    def _prepare(self, tokens: list[int], max_tokens: int, n_cache_reuse: int) -> StreamCall:
        if not tokens:
            raise EngineError("an engine call needs at least one prompt token")
        body = self.dialect.body(self._prompt(tokens), max_tokens, n_cache_reuse)
        parse = self._parse(len(tokens), max_tokens)
        return StreamCall.open(self.client, self.dialect.path, body, len(tokens), max_tokens, parse)

    def first_token(self, tokens: list[int], n_cache_reuse: int = 0) -> StreamCall:
        """Evaluate what of ``tokens`` the server has not cached and sample one token;
        ``n_cache_reuse`` > 0 lets llama-server reuse cached chunks of at least that
        many tokens by shifting them (its ``--cache-reuse``)."""
        return self._prepare(tokens, 1, n_cache_reuse)

    def generation(self, tokens: list[int], max_tokens: int, n_cache_reuse: int = 0) -> StreamCall:
        """At most ``max_tokens`` greedy tokens after ``tokens``, stopping at EOS."""
        return self._prepare(tokens, max_tokens, n_cache_reuse)

    # -- chat: the server renders (the conversation replay's render: server) ------------

    def apply_template(self, messages: list[dict[str, str]], generation: bool = True) -> str:
        """The prompt text llama-server renders for chat ``messages`` (its own template,
        with the generation prompt unless not ``generation``), as its chat completions
        will."""
        body = {"messages": messages, "add_generation_prompt": generation}
        answer = self.client.post_json("/apply-template", body)
        if not isinstance(answer, dict) or not isinstance(answer.get("prompt"), str):
            raise self.client.failure("POST /apply-template", answer=Response(200, answer))
        return answer["prompt"]

    def chat_tokens(self, text: str) -> list[int]:
        """The tokens llama-server evaluates for a rendered chat prompt: special-token text
        parsed, BOS added when the model asks for it (as its chat completions do)."""
        body = {"content": text, "add_special": True, "parse_special": True}
        return (
            ServerTokenizer(self.client, self.dialect).parse(
                self.client.post_json("/tokenize", body)
            )
            or []
        )

    def chat_first_token(
        self, messages: list[dict[str, str]], n_prompt: int, n_cache_reuse: int = 0
    ) -> StreamCall:
        """One streamed chat completion of one token, the server rendering ``messages``
        (``n_prompt``: its prompt's tokens, for messages)."""
        chat = ChatDialect()
        body = chat.body(messages, 1, n_cache_reuse)

        def parse(events: list[dict[str, Any]]) -> CallResult:
            return chat.result(events, 1, self.tokenize)

        return StreamCall.open(self.client, chat.path, body, n_prompt, 1, parse)

    def position_correction(self) -> str:
        """What a KV shift corrects for the served model, from its GGUF when there is
        one on this machine."""
        if isinstance(self.tokenizer, ClientTokenizer):
            return self.tokenizer.vocab.position_correction()
        from kvcache_exp.engines.vocab import position_correction

        return position_correction(self.model_file)

    # -- provenance and life cycle ----------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The engine for the run's record. ``server`` holds what must agree before
        configurations are pooled (build, API, model, clearing, how prompts are sent and
        counted); the URL, command line and log path change from job to job and sit
        beside it."""
        props = self.props
        generation = props.get("default_generation_settings") or {}
        spec = self.cache_clear_spec
        server = {
            "kind": "llama-server" if self.is_llama_server else "OpenAI-compatible",
            "build_info": props.get("build_info"),
            "api": self.api,
            "cache_clear": spec if isinstance(spec, str) else dict(spec),
            "model": self.model or props.get("model_path"),
            "n_ctx": generation.get("n_ctx"),
            "total_slots": props.get("total_slots"),
            "managed": self.managed is not None,
            "tokenizer": self.tokenizer.where,
            "prompts": "token ids" if self.token_prompts else "text",
            "bos_added_by_server": self.server_bos,
            "cached_counts": self.reports_cached,
        }
        info: dict[str, Any] = {
            "engine": self.name,
            "server": server,
            "server_url": self.base_url,
            "capabilities": sorted(c.value for c in self.capabilities),
        }
        if self.managed is not None:
            info["server_command"] = " ".join(self.managed.command)
            info["server_log"] = str(self.managed.log_path)
            info["server_startup_s"] = self.managed.startup_s
            server["binary"] = str(self.managed.binary)
            path = self.managed.log_path
            info.update(offload_report(path.read_text(errors="replace") if path else ""))
        info.update(self.settings)
        return info

    def close(self) -> None:
        """Stop a managed server (keeping its log after a failure); an external server
        is left as it was."""
        self.tokenizer.close()
        if self.managed is not None:
            self.managed.stop(keep_files=self.client.failed)
