"""Headless Chromium driven over the DevTools protocol, for looking at the report as a
reader would: load it, click through it (by calling the page's own functions), read
what it shows, and take screenshots.

Chromium speaks the protocol over a pair of pipes (``--remote-debugging-pipe``: it
reads commands on file descriptor 3 and writes replies on 4, each a JSON text ended by
a NUL byte), so Debian's ``chromium`` and the standard library are all that is needed:
no WebDriver, no browser download, no network port and no websocket package.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
#: The window the report tests look through unless they ask for another.
WINDOW = (1400, 1000)


def chromium() -> str | None:
    """Path of the chromium executable, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One browser tab: evaluate JavaScript, collect errors, take screenshots."""

    def __init__(self, to_browser: int, from_browser: int, timeout_s: float = 60.0) -> None:
        self._out, self._in = to_browser, from_browser
        self._buffer = b""
        self._ids = itertools.count(1)
        self._timeout_s = timeout_s
        self._events: list[dict[str, Any]] = []
        self.session: str | None = None
        self.errors: list[str] = []
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)[
            "sessionId"
        ]
        self.call("Runtime.enable")
        self.call("Log.enable")
        self.call("Page.enable")

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe (did it crash?)")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _record(self, message: dict[str, Any]) -> None:
        """Keep the page's events; remember every error the page reports."""
        self._events.append(message)
        method = message.get("method")
        params = message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(
                "console.error: "
                + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
                )
            )
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.errors.append(f"log: {params['entry'].get('text')}")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command (to the attached tab, once there is one) and wait for its reply."""
        msg_id = next(self._ids)
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self._timeout_s
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._record(reply)

    def wait_for(self, event: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """Wait until the tab sends ``event`` (one seen since the last wait counts)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for i, message in enumerate(self._events):
                if message.get("method") == event:
                    del self._events[: i + 1]
                    return message.get("params", {})
            self._events.clear()
            self._record(self._receive(deadline))

    def navigate(self, url: str, settle_s: float = 1.0) -> None:
        """Open ``url``, wait for its load event, then give React time to render."""
        self._events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        time.sleep(settle_s)

    def evaluate(self, expression: str, context_id: int | None = None) -> Any:
        """The value of a JavaScript expression (promises awaited), in the page or a frame."""
        params: dict[str, Any] = {"returnByValue": True, "awaitPromise": True}
        if context_id is not None:
            params["contextId"] = context_id
        result = self.call("Runtime.evaluate", expression=expression, **params)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def frame_context(self, url_prefix: str) -> int:
        """An execution context inside the child frame whose URL starts with ``url_prefix``.

        The report shows HTML results in an iframe loaded from a data: URL, which the
        page's own scripts may not read; the protocol can, which lets a test read exactly
        what the frame shows.
        """
        tree = self.call("Page.getFrameTree")["frameTree"]
        frames = [child["frame"] for child in tree.get("childFrames", [])]
        frame = next(f for f in frames if f.get("url", "").startswith(url_prefix))
        return self.call("Page.createIsolatedWorld", frameId=frame["id"])["executionContextId"]

    def set_viewport(self, width: int, height: int) -> None:
        """Make the page's viewport exactly ``width`` x ``height`` CSS pixels, as a
        window of that size shows it (headless Chromium's window size alone does not
        pin the viewport)."""
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path


@contextlib.contextmanager
def open_browser(window: tuple[int, int] = WINDOW) -> Iterator[Page]:
    """Start headless Chromium with a fresh profile and give a page to drive, whose
    viewport is ``window`` (width, height)."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("chromium is not installed")
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def _pipes_on_3_and_4() -> None:
        # Copies first: one of the pipe ends may itself be descriptor 3 or 4.
        commands, replies = os.dup(to_browser_r), os.dup(from_browser_w)
        os.dup2(commands, 3)
        os.dup2(replies, 4)

    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [
                exe,
                *FLAGS,
                f"--window-size={window[0]},{window[1]}",
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,  # descriptors 3 and 4 must reach chromium
            preexec_fn=_pipes_on_3_and_4,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        try:
            page = Page(to_browser_w, from_browser_r)
            page.set_viewport(*window)
            yield page
        finally:
            os.close(to_browser_w)
            os.close(from_browser_r)
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
