"""The managed llama-server, against the real server that `make server` builds.

Nothing is mocked: these tests start llama.cpp's own server with the embedded model and
check what the server engine relies on: the prompt-cache counters of a hit and a miss,
erasing the slot's cache, and that every way a server can fail gives one clear error
and leaves no process behind. Without the binary, they are skipped (run `make server`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvcache_exp.engines import managed_server
from kvcache_exp.engines.http_client import ServerHTTPError
from kvcache_exp.engines.managed_server import (
    ManagedServer,
    ServerExitedError,
    ServerNotFoundError,
    find_llama_server,
)

# Lengths of the prompt parts, in tokens: [A, B] is the warm prefix, Q the new turn.
N_A = 120
N_B = 100
N_Q = 20

TEXT_A = (
    "The lighthouse keeper counted the ships that passed each night and wrote their "
    "names in a ledger bound with blue thread. "
)
TEXT_B = (
    "Seven kilometres inland, a baker in the valley town kneaded rye dough before dawn "
    "while the radio played old songs. "
)
TEXT_Q = "Question: what did the keeper write in the ledger, and where did the baker work? "


@pytest.fixture(scope="module")
def server_binary() -> Path:
    """The built server; skip when there is none, but fail on a wrong $KVCACHE_LLAMA_SERVER."""
    try:
        return find_llama_server()
    except ServerNotFoundError as err:
        if os.environ.get(managed_server.ENV_VAR):
            raise
        pytest.skip(f"llama-server is not built; run `make server` to test it ({err})")


def start(model_path: Path, binary: Path, **kwargs) -> ManagedServer:
    """A server small and deterministic enough for tests (2 threads, 2048 tokens)."""
    kwargs.setdefault("threads", min(2, os.cpu_count() or 1))
    return ManagedServer(model_path, binary=binary, n_ctx=2048, **kwargs)


@pytest.fixture(scope="module")
def server(model_path: Path, server_binary: Path) -> Iterator[ManagedServer]:
    with start(model_path, server_binary) as srv:
        yield srv


def tokenize(srv: ManagedServer, text: str) -> list[int]:
    """Token ids of ``text`` by the server's tokenizer, without BOS."""
    answer = srv.client.post_json("/tokenize", {"content": text, "add_special": False})
    return [int(t) for t in answer["tokens"]]


def erase_slot(srv: ManagedServer) -> int:
    """Empty the KV cache of slot 0; return how many tokens it held."""
    return int(srv.client.post_json("/slots/0?action=erase", {}).get("n_erased", 0))


def tokens_of(srv: ManagedServer, text: str, n: int) -> list[int]:
    """Exactly ``n`` tokens of ``text`` repeated (no BOS: we lay out prompts ourselves)."""
    once = tokenize(srv, text)
    assert once, "the tokenizer returned nothing"
    return (once * (n // len(once) + 1))[:n]


@pytest.fixture(scope="module")
def parts(server: ManagedServer) -> tuple[list[int], list[int], list[int]]:
    a = tokens_of(server, TEXT_A, N_A)
    b = tokens_of(server, TEXT_B, N_B)
    q = tokens_of(server, TEXT_Q, N_Q)
    assert a[0] != b[0], "[B, Q] must share no prefix with [A, B]"
    return a, b, q


def complete(srv: ManagedServer, prompt: list[int], **extra) -> dict:
    """One greedy token after ``prompt``, with the prompt cache on."""
    body = {
        "prompt": prompt,
        "n_predict": 1,
        "cache_prompt": True,
        "temperature": 0.0,
        "top_k": 1,
        "id_slot": 0,
        **extra,
    }
    return srv.client.post_json("/completion", body)


def counts(answer: dict) -> tuple[int, int]:
    """(tokens the server took from its cache, tokens it evaluated) for the prompt."""
    return answer["timings"]["cache_n"], answer["timings"]["prompt_n"]


def processes_with(arg: str) -> list[int]:
    """Pids whose command line contains ``arg`` (a unique temporary path in these tests)."""
    if not Path("/proc").is_dir():
        pytest.skip("needs /proc to look for leftover processes")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if arg in cmdline:
            found.append(int(entry.name))
    return found


def test_starts_and_is_healthy(server: ManagedServer) -> None:
    assert server.is_running()
    assert server.base_url.startswith("http://127.0.0.1:")
    assert server.client.get_json("/health") == {"status": "ok"}
    assert server.log_path is not None and server.log_path.is_file()
    assert server.props["default_generation_settings"]["n_ctx"] == 2048
    assert server.props["total_slots"] == 1
    assert server.build_info


def test_prefix_hit_and_miss(server: ManagedServer, parts) -> None:
    a, b, q = parts
    erase_slot(server)

    cache_n, prompt_n = counts(complete(server, a + b))
    assert (cache_n, prompt_n) == (0, N_A + N_B)

    # The conversation goes on: everything before Q is reused.
    cache_n, prompt_n = counts(complete(server, a + b + q))
    assert (cache_n, prompt_n) == (N_A + N_B, N_Q)

    # A is dropped from the context: no prefix in common, everything is evaluated again.
    complete(server, a + b)
    cache_n, prompt_n = counts(complete(server, b + q))
    assert (cache_n, prompt_n) == (0, N_B + N_Q)


def test_erase_empties_the_cache(server: ManagedServer, parts) -> None:
    a, b, _ = parts
    complete(server, a + b)
    assert erase_slot(server) >= N_A + N_B
    cache_n, prompt_n = counts(complete(server, a + b))
    assert (cache_n, prompt_n) == (0, N_A + N_B)


def test_token_id_prompts_are_taken_as_they_are(server: ManagedServer, parts) -> None:
    """No BOS is added to a prompt of token ids: tokens_evaluated is the prompt's length."""
    a, _, _ = parts
    erase_slot(server)
    answer = complete(server, a)
    assert answer["tokens_evaluated"] == N_A
    assert answer["tokens_predicted"] == 1


def test_cache_reuse_shifts_the_kept_part(model_path: Path, server_binary: Path, parts) -> None:
    """With --cache-reuse, B is reused by shifting its KV cache after A is dropped."""
    a, b, q = parts
    with start(model_path, server_binary, extra_args=["--cache-reuse", "16"]) as srv:
        complete(srv, a + b, n_cache_reuse=16)
        cache_n, prompt_n = counts(complete(srv, b + q, n_cache_reuse=16))
    assert (cache_n, prompt_n) == (N_B, N_Q)


def test_flash_attention_and_kv_cache_types(
    model_path: Path, server_binary: Path, tmp_path: Path
) -> None:
    """The settings reach the server with this version's spelling; a quantized V cache
    without flash attention is refused at start, and the error quotes the reason."""
    with start(
        model_path, server_binary, flash_attn=True, cache_type_k="q8_0", cache_type_v="q8_0"
    ) as srv:
        assert complete(srv, [19556, 905] * 8)["tokens_predicted"] == 1
        command = " ".join(srv.command)
    assert "--flash-attn on --cache-type-k q8_0 --cache-type-v q8_0" in command

    refused = start(
        model_path,
        server_binary,
        flash_attn=False,
        cache_type_v="q8_0",
        log_path=tmp_path / "refused.log",  # our own log path: nothing is left in /tmp
    )
    with pytest.raises(ServerExitedError, match="quantized V cache requires flash_attn"):
        refused.start()


def test_missing_binary_says_make_server(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ServerNotFoundError, match="make server"):
        ManagedServer(model_path, binary=tmp_path / "no-such-llama-server").start()

    monkeypatch.setenv(managed_server.ENV_VAR, str(tmp_path / "also-missing"))
    with pytest.raises(ServerNotFoundError, match=managed_server.ENV_VAR):
        find_llama_server()

    # Nowhere to be found: not built under the repository, not on PATH.
    monkeypatch.delenv(managed_server.ENV_VAR)
    monkeypatch.setattr(managed_server, "_REPO", tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerNotFoundError, match="make server"):
        find_llama_server()


def test_server_that_exits_at_once(server_binary: Path, tmp_path: Path) -> None:
    not_a_model = tmp_path / "not-a-model.gguf"
    not_a_model.write_bytes(b"this is not a GGUF file\n" * 64)
    log = tmp_path / "server.log"
    srv = ManagedServer(not_a_model, binary=server_binary, log_path=log, threads=1)

    with pytest.raises(ServerExitedError) as caught:
        srv.start()

    message = str(caught.value)
    assert "exited while starting" in message
    assert str(log) in message
    last_log_line = log.read_text().strip().splitlines()[-1]
    assert last_log_line in message  # the log's tail is quoted
    assert srv.pid is None and srv.returncode not in (None, 0)
    assert processes_with(str(not_a_model)) == []


def test_server_killed_mid_run_is_detected(model_path: Path, server_binary: Path) -> None:
    with start(model_path, server_binary, threads=1) as srv:
        pid = srv.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ServerExitedError, match="killed by signal 9") as caught:
            srv.client.post_json("/completion", {"prompt": [1, 2, 3], "n_predict": 1})
        assert "log " in str(caught.value)
    assert srv.returncode == -signal.SIGKILL
    assert not srv.is_running()


def test_no_server_left_after_interrupt(
    model_path: Path, server_binary: Path, tmp_path: Path
) -> None:
    log = tmp_path / "interrupted.log"
    with pytest.raises(KeyboardInterrupt), start(model_path, server_binary, log_path=log) as srv:
        assert srv.is_running()
        raise KeyboardInterrupt
    assert srv.pid is None
    assert srv.returncode is not None
    slot_dir = srv.command[srv.command.index("--slot-save-path") + 1]  # unique to this server
    assert processes_with(slot_dir) == []


def test_http_errors_are_clear(server: ManagedServer) -> None:
    """An HTTP error is a ServerHTTPError with the status and the server's own message.

    (A bad slot id is no such error: this server version takes slot ids modulo the
    number of slots, so /slots/7 is slot 0.)
    """
    with pytest.raises(ServerHTTPError, match="HTTP 400.*Invalid action") as caught:
        server.client.post_json("/slots/0?action=nope", {})
    assert caught.value.status == 400
