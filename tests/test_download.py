"""The downloader's behaviour on bad networks, proved against servers on 127.0.0.1.

Each fault a real hub or mirror can produce is staged by a tiny HTTP handler: a file with other
bytes than pinned, a body cut short, a server error that goes away, no server at all. In every
failing case nothing may be left under the final name (the next run would trust it), and the
error must say what went wrong in one message.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvcache_exp.models.download import (
    ChecksumMismatchError,
    DownloadError,
    download_file,
    sha256_file,
)

PAYLOAD = bytes(range(256)) * 40  # 10 KiB, every byte value
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
FAST = {"retries": 2, "timeout": 5.0, "backoff": 0.01}


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path; subclasses change how. Counts requests on the server."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Keep test output clean."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requests += 1  # type: ignore[attr-defined]
        self.respond(self.server.requests)  # type: ignore[attr-defined]

    def respond(self, number: int) -> None:
        self.send_body(PAYLOAD)

    def send_body(self, body: bytes, declared: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) if declared is None else declared))
        self.end_headers()
        self.wfile.write(body)


class _Truncating(_Handler):
    def respond(self, number: int) -> None:
        self.send_body(PAYLOAD[:1000], declared=len(PAYLOAD))  # then the connection closes


class _FailsFirst(_Handler):
    def respond(self, number: int) -> None:
        if number == 1:
            self.send_error(503, "Service Unavailable")
        else:
            self.send_body(PAYLOAD)


class _NotFound(_Handler):
    def respond(self, number: int) -> None:
        self.send_error(404, "Not Found")


@contextlib.contextmanager
def serve(handler: type[_Handler]) -> Iterator[tuple[str, http.server.HTTPServer]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/model.safetensors", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir()) if dest.parent.exists() else []


def test_download_verifies_and_renames(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "model.safetensors"
    with serve(_Handler) as (url, server):
        assert download_file(url, dest, PAYLOAD_SHA, **FAST) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest) == ["model.safetensors"]
    assert sha256_file(dest) == PAYLOAD_SHA
    assert server.requests == 1


def test_checksum_mismatch_is_clear_and_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "model.safetensors"
    wrong = "0" * 64
    with serve(_Handler) as (url, server), pytest.raises(ChecksumMismatchError) as info:
        download_file(url, dest, wrong, **FAST)
    message = str(info.value)
    assert "model.safetensors" in message
    assert wrong in message and PAYLOAD_SHA in message
    assert _leftovers(dest) == []
    # A complete file with other bytes is not fetched again (see the module's retry policy).
    assert server.requests == 1


def test_truncated_download_is_clear_and_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "model.safetensors"
    with serve(_Truncating) as (url, server), pytest.raises(DownloadError) as info:
        download_file(url, dest, PAYLOAD_SHA, **FAST)
    message = str(info.value)
    assert "truncated" in message
    assert f"received 1000 of {len(PAYLOAD)} bytes" in message
    assert _leftovers(dest) == []
    assert server.requests == FAST["retries"] + 1  # a cut connection is worth retrying


def test_unreachable_network_gives_one_clear_message(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/openai-community/gpt2/resolve/abc/model.safetensors"
    dest = tmp_path / "cache" / "model.safetensors"
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, PAYLOAD_SHA, **FAST)
    message = str(info.value)
    assert f"after {FAST['retries'] + 1} attempt(s)" in message
    assert f"download {url} by hand" in message
    assert f"copy it to {dest}" in message
    assert PAYLOAD_SHA in message
    assert not dest.exists()
    assert not dest.with_name(dest.name + ".part").exists()


def test_retry_after_server_error_then_success(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dest = tmp_path / "model.safetensors"
    with (
        caplog.at_level(logging.WARNING, logger="kvcache_exp.models.download"),
        serve(_FailsFirst) as (url, server),
    ):
        download_file(url, dest, PAYLOAD_SHA, **FAST)
    assert server.requests == 2
    assert dest.read_bytes() == PAYLOAD
    assert any("HTTP 503" in record.getMessage() for record in caplog.records)


def test_http_404_fails_at_once(tmp_path: Path) -> None:
    dest = tmp_path / "model.safetensors"
    with serve(_NotFound) as (url, server), pytest.raises(DownloadError, match="HTTP 404"):
        download_file(url, dest, PAYLOAD_SHA, **FAST)
    assert server.requests == 1
    assert _leftovers(dest) == []


def test_existing_file_with_pinned_hash_is_not_downloaded(tmp_path: Path) -> None:
    dest = tmp_path / "model.safetensors"
    dest.write_bytes(PAYLOAD)
    with serve(_Handler) as (url, server):
        download_file(url, dest, PAYLOAD_SHA, **FAST)
    assert server.requests == 0
    assert dest.read_bytes() == PAYLOAD


def test_existing_file_with_other_hash_is_downloaded_again(tmp_path: Path) -> None:
    dest = tmp_path / "model.safetensors"
    dest.write_bytes(b"stale partial content")
    with serve(_Handler) as (url, server):
        download_file(url, dest, PAYLOAD_SHA, **FAST)
    assert server.requests == 1
    assert dest.read_bytes() == PAYLOAD


def test_stale_file_is_removed_when_the_new_download_fails(tmp_path: Path) -> None:
    dest = tmp_path / "model.safetensors"
    dest.write_bytes(b"stale partial content")
    with serve(_NotFound) as (url, _), pytest.raises(DownloadError):
        download_file(url, dest, PAYLOAD_SHA, **FAST)
    assert _leftovers(dest) == []


def test_unpinned_file_is_accepted_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dest = tmp_path / "model.safetensors"
    with (
        caplog.at_level(logging.WARNING, logger="kvcache_exp.models.download"),
        serve(_Handler) as (url, _),
    ):
        download_file(url, dest, None, **FAST)
    assert dest.read_bytes() == PAYLOAD
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("UNVERIFIED" in w and PAYLOAD_SHA in w for w in warnings)
