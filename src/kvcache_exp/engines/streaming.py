"""One streamed completion (server-sent events), as the protocol's prepared call.

TTFT is the first streamed token. The call opens its TCP connection before the timer
starts (llama-server closes the connection after each streamed answer, so there is no
keep-alive to reuse); the timed :meth:`StreamCall.run` sends the request and returns at
the first event, which the server sends after the prefill and one sampled token (a
generation reads to the end of the stream). The rest of the stream (the final event
with the server's counts and timings) is read by :meth:`StreamCall.result`, untimed,
and mapped to a :class:`~kvcache_exp.engines.base.CallResult` by the API's dialect.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvcache_exp.engines.base import CallResult, EngineError
from kvcache_exp.engines.dialects import StreamError
from kvcache_exp.engines.http_client import TRANSPORT_ERRORS, HTTPClient, Response, decode, short

#: Maps the stream's JSON events to what the call did (the dialect's ``result``).
Parse = Callable[[list[dict[str, Any]]], CallResult]


@dataclass
class StreamCall:
    """One streamed completion, connected and encoded before the timer starts."""

    client: HTTPClient
    path: str
    payload: bytes
    n_prompt: int
    max_tokens: int
    parse: Parse
    conn: http.client.HTTPConnection
    lines: list[bytes] = field(default_factory=list)
    response: http.client.HTTPResponse | None = None
    status: int = 0
    error_body: Any = None

    @classmethod
    def open(
        cls,
        client: HTTPClient,
        path: str,
        body: dict[str, Any],
        n_prompt: int,
        max_tokens: int,
        parse: Parse,
    ) -> StreamCall:
        """Encode ``body`` and connect, both outside the timed region."""
        payload = json.dumps(body).encode()
        conn = client.connect()
        try:
            conn.connect()
        except TRANSPORT_ERRORS as err:
            raise client.failure(f"POST {path}", err) from err
        return cls(client, path, payload, n_prompt, int(max_tokens), parse, conn)

    @property
    def request_name(self) -> str:
        return f"POST {self.path} ({self.n_prompt} prompt tokens, max {self.max_tokens})"

    def run(self) -> None:
        """Send, and read to the first event (a first token) or to the end (a generation)."""
        try:
            self.conn.request(
                "POST", self.client.endpoint.prefix + self.path, body=self.payload,
                headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
            )  # fmt: skip
            resp = self.conn.getresponse()
            self.response, self.status = resp, resp.status
            if resp.status != 200:
                self.error_body = decode(resp.read())
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
        except TRANSPORT_ERRORS as err:
            self.conn.close()
            raise self.client.failure(self.request_name, err) from err

    def _read_rest(self) -> None:
        resp = self.response
        if resp is None:
            return
        try:
            while line := resp.readline():
                if line.startswith((b"data:", b"error:")):
                    self.lines.append(line)
        except TRANSPORT_ERRORS as err:
            raise self.client.failure(self.request_name, err) from err
        finally:
            self.conn.close()

    def _fail(self, answer: Any) -> EngineError:
        return self.client.failure(self.request_name, answer=Response(self.status, answer))

    def events(self) -> list[dict[str, Any]]:
        """The stream's JSON events; an error event or status raises EngineError."""
        self._read_rest()
        if self.status != 200:
            raise self._fail(self.error_body)
        found = []
        for line in self.lines:
            head, _, rest = line.partition(b":")
            body = rest.strip()
            if body == b"[DONE]":
                continue
            event = decode(body)
            if head == b"error" or (isinstance(event, dict) and "error" in event):
                raise self._fail(event)
            if not isinstance(event, dict):
                raise self._fail(f"not a JSON event: {short(body)}")
            found.append(event)
        if not found:
            raise self._fail("an empty stream")
        return found

    def result(self) -> CallResult:
        events = self.events()
        try:
            return self.parse(events)
        except StreamError as err:
            raise self._fail(str(err)) from err
