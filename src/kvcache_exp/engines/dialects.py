"""The two completion APIs a server engine speaks (``server.api``), as two small classes
with the same methods: where a completion goes (``path``), its request body, the
bodies of ``/tokenize`` and ``/detokenize``, and how a streamed answer maps to a
:class:`~kvcache_exp.engines.base.CallResult`.

* :class:`NativeDialect` (``llama_server``): llama-server's ``/completion``. Token ids
  in, token ids out, and the server's exact counts in the last event's ``timings``.
* :class:`OpenAIDialect` (``openai``): ``/v1/completions``. Text out; the counts come
  from ``usage`` (``prompt_tokens_details.cached_tokens``: vLLM with
  ``--enable-prompt-tokens-details``, SGLang with ``--enable-cache-report``) or, on
  llama-server, from the ``timings`` beside it. A count the server does not report stays
  unknown, and the trial then cannot be verified.

What the counts mean (llama-server b1-0c1e570, checked in tests/test_server_engine.py):
``prompt_n`` is how many prompt tokens were evaluated and ``cache_n`` how many were
reused; ``predicted_n`` counts every sampled token, the end-of-generation token included,
and each sampled token but the last is then evaluated alone. So a call evaluates
``prompt_n + predicted_n - 1`` tokens, as llama-cpp-python's counters say in-process.
With ``n_predict`` 1, ``prompt_ms`` includes the first token's logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from kvcache_exp.engines.base import CallResult, EngineError
from kvcache_exp.engines.cache_clear import SLOT

Tokenize = Callable[[str], list[int]]

#: ``server.api`` values.
APIS: tuple[str, ...] = ("llama_server", "openai")


class StreamError(EngineError):
    """A stream that parsed, but does not say what a call did (the message says why)."""


def number(mapping: Mapping[str, Any] | None, key: str) -> float | None:
    """``mapping[key]`` when it is a number, else None."""
    value = (mapping or {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def llama_server_fields(n_cache_reuse: int) -> dict[str, Any]:
    """llama-server's own request fields: the slot, the prompt cache, greedy sampling and
    KV-shift reuse (0 explicitly: the field alone turns shifting on, and a miss must be
    a miss; the server cure sends a chunk size > 0)."""
    return {"cache_prompt": True, "id_slot": SLOT, "n_cache_reuse": int(n_cache_reuse), "top_k": 1}


def call_result(
    tokens: list[int],
    finish: str,
    *,
    prompt_n: float | None,
    cached: float | None,
    n_generated: int,
    timings: Mapping[str, Any],
    extra: dict[str, Any],
) -> CallResult:
    """A :class:`CallResult` from a server's counts (-1 and NaN where it gave none)."""
    prompt_ms, predicted_ms = number(timings, "prompt_ms"), number(timings, "predicted_ms")
    both = prompt_ms is not None and predicted_ms is not None
    return CallResult(
        tokens=tokens,
        finish_reason=finish,
        prefill_tokens=int(prompt_n) if prompt_n is not None else -1,
        prefill_ms=prompt_ms if prompt_ms is not None else math.nan,
        decode_tokens=max(n_generated - 1, 0),
        decode_ms=predicted_ms if predicted_ms is not None else math.nan,
        cached_tokens=int(cached) if cached is not None else None,
        engine_ms=prompt_ms + predicted_ms if both else math.nan,  # type: ignore[operator]
        extra={"server_timings": dict(timings), **extra},
    )


def _strip_stop(tokens: list[int], generated: int | None, max_tokens: int) -> int | None:
    """Remove the end-of-generation token the stream carried (llama-server sends it as a
    last token event); return it. A one-token call keeps it, as in-process."""
    if max_tokens > 1 and tokens and generated is not None and len(tokens) == generated:
        return tokens.pop()
    return None


class NativeDialect:
    """llama-server's ``/completion``: token ids both ways, counts in ``timings``."""

    name = "llama_server"
    path = "/completion"

    def body(
        self, prompt: list[int] | str, max_tokens: int, n_cache_reuse: int = 0, stream: bool = True
    ) -> dict[str, Any]:
        """The greedy request for ``prompt``."""
        return {
            "prompt": prompt,
            "n_predict": int(max_tokens),
            "stream": stream,
            "temperature": 0.0,
            **llama_server_fields(n_cache_reuse),
        }

    def tokenize_body(self, text: str) -> dict[str, Any]:
        return {"content": text, "add_special": False}

    def detokenize_body(self, tokens: list[int]) -> dict[str, Any]:
        return {"tokens": list(tokens)}

    def result(
        self, events: list[dict[str, Any]], max_tokens: int, tokenize: Tokenize
    ) -> CallResult:
        """Tokens per event, the counts in the last one."""
        final = events[-1]
        if not final.get("stop"):
            raise StreamError("the stream ended early")
        timings = final.get("timings") or {}
        tokens = [int(t) for e in events for t in (e.get("tokens") or [])]
        generated = number(timings, "predicted_n")
        n_generated = int(generated) if generated is not None else len(tokens)
        stop_type = str(final.get("stop_type", ""))
        finish = {"eos": "stop", "word": "stop", "limit": "length"}.get(stop_type, stop_type)
        stop = _strip_stop(tokens, n_generated, max_tokens) if finish == "stop" else None
        return call_result(
            tokens,
            finish,
            prompt_n=number(timings, "prompt_n"),
            cached=number(timings, "cache_n"),
            n_generated=n_generated,
            timings=timings,
            extra={
                "tokens_cached": final.get("tokens_cached"),
                "tokens_evaluated": final.get("tokens_evaluated"),
                **({"stop_token": stop} if stop is not None else {}),
            },
        )


class OpenAIDialect:
    """``/v1/completions``: text out, ``usage`` (and llama-server's ``timings``) at the end.

    ``model`` goes into every request; on llama-server (``llama_server``) the native
    fields go too (its slot and prompt cache), and ``/tokenize`` takes llama-server's
    body, else vLLM's and SGLang's.
    """

    name = "openai"
    path = "/v1/completions"

    def __init__(self, model: str | None, llama_server: bool) -> None:
        self.model = model
        self.llama_server = llama_server

    def body(
        self, prompt: list[int] | str, max_tokens: int, n_cache_reuse: int = 0, stream: bool = True
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": int(max_tokens),
            "stream": stream,
            "temperature": 0.0,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if self.model:
            body["model"] = self.model
        if self.llama_server:
            body.update(llama_server_fields(n_cache_reuse))
        elif n_cache_reuse:
            raise EngineError("KV-shift reuse (n_cache_reuse) is a llama-server request field")
        return body

    def tokenize_body(self, text: str) -> dict[str, Any]:
        if self.llama_server:
            return NativeDialect().tokenize_body(text)
        # vLLM and SGLang: TokenizeCompletionRequest / their documented body.
        body: dict[str, Any] = {"prompt": text, "add_special_tokens": False}
        return {**body, "model": self.model} if self.model else body

    def detokenize_body(self, tokens: list[int]) -> dict[str, Any]:
        body: dict[str, Any] = {"tokens": list(tokens)}
        return {**body, "model": self.model} if self.model and not self.llama_server else body

    def result(
        self, events: list[dict[str, Any]], max_tokens: int, tokenize: Tokenize
    ) -> CallResult:
        """Token ids are not streamed by this API: the text is tokenized again, which can
        differ from the generated ids where a boundary merges (such a trial then fails
        the warm-up check rather than passing wrongly). A non-streamed answer is one
        event of the same shape."""
        choices = [c for e in events for c in (e.get("choices") or [])[:1]]
        text = "".join(str(c.get("text") or "") for c in choices)
        finish = next(
            (str(c["finish_reason"]) for c in reversed(choices) if c.get("finish_reason")), ""
        )
        usage = next((e["usage"] for e in reversed(events) if e.get("usage")), None) or {}
        timings = next((e["timings"] for e in reversed(events) if e.get("timings")), None) or {}
        cached = number(timings, "cache_n")
        if cached is None:
            cached = number(usage.get("prompt_tokens_details"), "cached_tokens")
        prompt_n = number(timings, "prompt_n")
        prompt_tokens = number(usage, "prompt_tokens")
        if prompt_n is None and prompt_tokens is not None and cached is not None:
            prompt_n = prompt_tokens - cached
        generated = number(timings, "predicted_n")
        if generated is None:
            generated = number(usage, "completion_tokens")
        tokens = tokenize(text) if text else []
        n_generated = int(generated) if generated is not None else len(tokens)
        if max_tokens == 1 and n_generated == 1 and len(tokens) != 1:
            tokens = tokens[:1] or [-1]  # one token was sampled (EOS, or a partial char)
        return call_result(
            tokens,
            finish,
            prompt_n=prompt_n,
            cached=cached,
            n_generated=n_generated,
            timings=timings,
            extra={"usage": usage, "text": text},
        )


class ChatDialect:
    """llama-server's ``/v1/chat/completions``: the server renders the messages with its
    own chat template. Its stream carries text deltas (no token ids) and, in the last
    chunk, the same ``timings`` as ``/completion``; read as :class:`OpenAIDialect` reads a
    completion's."""

    path = "/v1/chat/completions"

    def body(
        self, messages: list[dict[str, str]], max_tokens: int, n_cache_reuse: int = 0
    ) -> dict[str, Any]:
        return {
            "messages": messages,
            "max_tokens": int(max_tokens),
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.0,
            **llama_server_fields(n_cache_reuse),
        }

    def result(
        self, events: list[dict[str, Any]], max_tokens: int, tokenize: Tokenize
    ) -> CallResult:
        as_completion = []
        for event in events:
            choices = [
                {"text": (c.get("delta") or {}).get("content") or "", **c}
                for c in (event.get("choices") or [])[:1]
            ]
            as_completion.append({**event, "choices": choices})
        return OpenAIDialect(None, llama_server=True).result(as_completion, max_tokens, tokenize)


def check_api(api: str) -> None:
    """Refuse an unknown ``server.api`` (before any request is sent)."""
    if api not in APIS:
        raise EngineError(f"server.api must be one of {', '.join(APIS)}, got {api!r}")


def dialect(
    api: str, *, model: str | None = None, llama_server: bool = False
) -> NativeDialect | OpenAIDialect:
    """The dialect of ``server.api``."""
    check_api(api)
    return NativeDialect() if api == "llama_server" else OpenAIDialect(model, llama_server)
