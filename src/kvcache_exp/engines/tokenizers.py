"""Where a server engine's tokens come from: the server's ``/tokenize``, or, where the
server has none, the model's own vocabulary read from its GGUF on this machine.

The prompts are laid out token by token (:mod:`kvcache_exp.measure.prompts`), so the
tokens must be the ones the server's model reads. llama-server, vLLM and SGLang say so
through ``/tokenize``; llama-cpp-python's ``python -m llama_cpp.server`` has no such
route (404), and its ``/v1/completions`` takes only text. For such a server the client
tokenizes with llama.cpp and the GGUF that ``model`` names, and a prompt that must go
as text is checked to read back as exactly its tokens (:meth:`ClientTokenizer.as_text`),
as the server's tokenizer (special-token text parsed) will read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvcache_exp.engines.base import EngineError
from kvcache_exp.engines.dialects import NativeDialect, OpenAIDialect
from kvcache_exp.engines.http_client import HTTPClient, Response

#: Statuses that say "no such route" (FastAPI answers 404, some servers 405).
NO_ROUTE = (404, 405)


class ServerTokenizer:
    """The server's own ``/tokenize`` and ``/detokenize``."""

    where = "server (/tokenize)"

    def __init__(self, client: HTTPClient, dialect: NativeDialect | OpenAIDialect) -> None:
        self.client = client
        self.dialect = dialect

    @staticmethod
    def parse(answer: Any) -> list[int] | None:
        """Token ids of a ``/tokenize`` answer (plain ids, or ``{id, piece}`` objects)."""
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list):
            return None
        return [int(t["id"]) if isinstance(t, dict) else int(t) for t in tokens]

    def tokenize(self, text: str) -> list[int]:
        answer = self.client.json("POST", "/tokenize", self.dialect.tokenize_body(text))
        ids = self.parse(answer)
        if ids is None:
            raise self.client.failure("POST /tokenize", answer=_ok(answer))
        return ids

    def detokenize(self, tokens: list[int]) -> str:
        answer = self.client.json("POST", "/detokenize", self.dialect.detokenize_body(tokens))
        if isinstance(answer, dict):
            for key in ("content", "prompt", "text"):  # llama-server, vLLM, SGLang
                if isinstance(answer.get(key), str):
                    return answer[key]
        raise self.client.failure("POST /detokenize", answer=_ok(answer))

    def close(self) -> None:
        pass


def _ok(body: Any) -> Response:
    """A 2xx answer whose body is not what the request promises."""
    return Response(200, body)


class ClientTokenizer:
    """The model's vocabulary from its GGUF (llama.cpp, ``vocab_only``), on this machine."""

    where = "client (the GGUF's vocabulary)"

    def __init__(self, model_file: Path) -> None:
        from kvcache_exp.engines.vocab import Vocabulary  # loads llama.cpp only when needed

        self.vocab = Vocabulary(model_file)

    def tokenize(self, text: str) -> list[int]:
        return self.vocab.tokenize(text)

    def detokenize(self, tokens: list[int]) -> str:
        return self.vocab.detokenize(tokens)

    def as_text(self, tokens: list[int]) -> str:
        """``tokens`` as the text a server will tokenize back to exactly them.

        A server tokenizing a text prompt parses special-token text (llama-cpp-python's
        does), so the check does too; a prompt that does not survive is refused rather
        than sent as other tokens than the design's.
        """
        text = self.vocab.detokenize(tokens)
        again = self.vocab.tokenize(text, special=True)
        if again != list(tokens):
            at = next(
                (i for i, (x, y) in enumerate(zip(again, tokens, strict=False)) if x != y),
                min(len(again), len(tokens)),
            )
            raise EngineError(
                f"a prompt of {len(tokens)} tokens reads back from its text as {len(again)} "
                f"tokens (first difference at token {at}); this server takes only text, so it "
                "would evaluate other tokens than the design's"
            )
        return text

    def close(self) -> None:
        self.vocab.close()


def open_tokenizer(
    client: HTTPClient,
    dialect: NativeDialect | OpenAIDialect,
    model_file: str | Path | None,
) -> ServerTokenizer | ClientTokenizer:
    """The server's tokenizer when it has ``/tokenize``, else the GGUF's on this machine
    (a clear error naming ``model`` when there is no local GGUF to read)."""
    probe = client.request("POST", "/tokenize", dialect.tokenize_body(" cache"))
    if probe.ok and ServerTokenizer.parse(probe.body) is not None:
        return ServerTokenizer(client, dialect)
    if probe.status not in NO_ROUTE:
        raise client.failure("POST /tokenize", answer=probe)
    if model_file is None or not Path(model_file).is_file():
        raise EngineError(
            f"{client.label} has no /tokenize (POST /tokenize answered HTTP {probe.status}), "
            "so the prompts are tokenized here with the model's own vocabulary, read from "
            f"its GGUF: but `model` names {model_file or 'no file'}, which is not a file on "
            "this machine. Set `model` to a local copy of the GGUF the server serves"
        )
    return ClientTokenizer(Path(model_file))
