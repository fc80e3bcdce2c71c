"""Downloads that behave on flaky or absent networks.

The workflow fetches model checkpoints of up to 1.5 GB from a model hub (or a mirror). A
half-written file under its final name would be mistaken for a good one by the next run, so
every download goes to ``<dest>.part`` first, is checked (size against Content-Length, then
sha256 against the pinned value) and only then renamed onto ``dest`` with ``os.replace``,
which is atomic on one file system. On any failure the ``.part`` file is removed and nothing
is left under ``dest``'s name.

Retry policy (why each case is or is not retried):

* connection errors, timeouts, truncated bodies and HTTP 5xx/408/429 are usually transient,
  so they are retried with exponential backoff (``backoff * 2**attempt`` seconds);
* other HTTP 4xx (404: wrong repo, revision or file name) will not change on a retry, so they
  fail at once;
* a sha256 mismatch on a complete body is **not** retried: the server delivered a whole file
  that is simply not the pinned one (wrong pin, a mirror serving other bytes, tampering), and
  downloading 1.5 GB again would give the same bytes.

When every attempt failed for network reasons, one :class:`DownloadError` says which URL to
download by hand and where to put it, so a user on a machine without internet knows what to do.

Only the standard library (``urllib``) is used, so this works in any environment the workflow
runs in.
"""

from __future__ import annotations

import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from kvcache_exp.models.files import CHUNK_SIZE, sha256_file

logger = logging.getLogger(__name__)

#: Sent with every request; some mirrors refuse Python's default agent.
USER_AGENT = "kvcache-exp/0.1 (+urllib)"

#: HTTP statuses that a later attempt may well not get again.
RETRYABLE_HTTP_STATUSES = frozenset({408, 429})


class DownloadError(RuntimeError):
    """A file could not be downloaded and verified; the message says what to do."""


class ChecksumMismatchError(DownloadError):
    """The server sent a complete file whose sha256 is not the pinned one."""


class _TransientError(Exception):
    """An attempt failed in a way that a later attempt may not (internal)."""


def _manual_instructions(url: str, dest: Path, sha256: str | None) -> str:
    check = f" and check that its sha256 is {sha256}" if sha256 else ""
    return (
        f"If this machine has no internet access, download {url} by hand on a machine that has, "
        f"copy it to {dest}{check}, then run again (an existing file with the right sha256 is "
        "used as it is)."
    )


def _remove_quietly(path: Path) -> None:
    path.unlink(missing_ok=True)


def _fetch_once(url: str, part: Path, timeout: float) -> tuple[int, int | None]:
    """Stream ``url`` into ``part``; return (bytes received, Content-Length or None).

    Raises :class:`_TransientError` for failures worth retrying and :class:`DownloadError`
    for those that are not.
    """
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code >= 500 or exc.code in RETRYABLE_HTTP_STATUSES:
            raise _TransientError(f"HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(
            f"Download of {url} failed with HTTP {exc.code} {exc.reason}; this is not a network "
            "outage, so it was not retried: check the repository, revision and file name, and the "
            "configured base URL."
        ) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _TransientError(f"{type(exc).__name__}: {exc}") from exc

    with response:
        length_header = response.headers.get("Content-Length")
        expected = int(length_header) if length_header and length_header.isdigit() else None
        received = 0
        next_log = 0.1
        with open(part, "wb") as out:
            while True:
                try:
                    chunk = response.read(CHUNK_SIZE)
                except http.client.IncompleteRead as exc:
                    received += len(exc.partial)
                    raise _TransientError(
                        f"truncated download: received {received} of {expected} bytes"
                    ) from exc
                except (OSError, http.client.HTTPException) as exc:
                    # socket.timeout and ConnectionResetError are OSErrors.
                    raise _TransientError(f"{type(exc).__name__} while reading: {exc}") from exc
                if not chunk:
                    break
                # A write error (disk full) is not a network problem: it propagates unretried.
                out.write(chunk)
                received += len(chunk)
                if expected and expected > 50 * CHUNK_SIZE and received / expected >= next_log:
                    logger.info("%s: %d%% of %d bytes", part.name, int(100 * next_log), expected)
                    next_log += 0.1
    if expected is not None and received != expected:
        raise _TransientError(
            f"truncated download: received {received} of {expected} bytes (Content-Length)"
        )
    return received, expected


def download_file(
    url: str,
    dest: Path,
    sha256: str | None,
    *,
    retries: int = 4,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` and verify it; return ``dest``.

    Args:
        url: What to fetch (http or https; redirects are followed).
        dest: Final path. Its parent is created if needed.
        sha256: The pinned hex sha256. ``None`` accepts any content but logs a warning that the
            file is unverified, because a pin that could not be found must not block a run.
        retries: How many times to try again after the first attempt fails for a transient
            reason (so at most ``retries + 1`` requests).
        timeout: Seconds a connect or a single read may block before the attempt counts as
            failed.
        backoff: Seconds to wait before the first retry; doubled for each further retry.

    Returns:
        ``dest``, holding exactly the verified bytes.

    Raises:
        ChecksumMismatchError: The file arrived whole but its sha256 differs from ``sha256``.
        DownloadError: HTTP 4xx, or the network failed ``retries + 1`` times; the message
            then says what to download by hand and where to put it.
    """
    dest = Path(dest)
    expected_sha = sha256.lower() if sha256 else None

    if dest.exists():
        if expected_sha is None:
            logger.warning("%s exists and no sha256 is pinned for it: using it UNVERIFIED", dest)
            return dest
        actual = sha256_file(dest)
        if actual == expected_sha:
            logger.info("%s already present with the pinned sha256; not downloading", dest)
            return dest
        logger.warning(
            "%s exists but its sha256 %s is not the pinned %s: removing it and downloading again",
            dest,
            actual,
            expected_sha,
        )
        # Removed now so that a failed re-download leaves nothing under dest's name.
        _remove_quietly(dest)

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempts = retries + 1
    last_error = "no attempt made"
    for attempt in range(attempts):
        if attempt:
            delay = backoff * (2 ** (attempt - 1))
            logger.warning(
                "Download of %s failed (%s); retry %d of %d in %.1f s",
                url,
                last_error,
                attempt,
                retries,
                delay,
            )
            time.sleep(delay)
        logger.info("Downloading %s -> %s", url, dest)
        started = time.monotonic()
        try:
            received, _ = _fetch_once(url, part, timeout)
        except _TransientError as exc:
            _remove_quietly(part)
            last_error = str(exc)
            continue
        except BaseException:
            _remove_quietly(part)
            raise

        try:
            actual = sha256_file(part)
            if expected_sha is None:
                logger.warning(
                    "No sha256 pinned for %s: keeping it UNVERIFIED (sha256 %s); pin this value "
                    "to make the run reproducible",
                    dest.name,
                    actual,
                )
            elif actual != expected_sha:
                raise ChecksumMismatchError(
                    f"Checksum mismatch for {dest.name} from {url}: expected sha256 "
                    f"{expected_sha}, got {actual}. The file was deleted and nothing was "
                    f"written to {dest}. Not retried: the server sent a complete file with "
                    "other bytes, so check the pinned revision and hash, or the mirror."
                )
            os.replace(part, dest)
        except BaseException:
            _remove_quietly(part)
            raise
        logger.info(
            "Downloaded %s (%d bytes, sha256 %s) in %.1f s",
            dest.name,
            received,
            actual,
            time.monotonic() - started,
        )
        return dest

    raise DownloadError(
        f"Could not download {url} after {attempts} attempt(s); last error: {last_error}. "
        + _manual_instructions(url, dest, expected_sha)
    )


__all__ = [
    "ChecksumMismatchError",
    "DownloadError",
    "download_file",
]
