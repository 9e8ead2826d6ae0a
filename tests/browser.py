"""A real headless Chromium for the review page's tests, driven over the DevTools protocol.

The browser is Debian's ``chromium`` (``.ci/run`` installs it). It runs with ``--remote-debugging-pipe``:
commands go in on its file descriptor 3 and answers come back on 4, as JSON messages ended by a NUL
byte, so no port is opened and parallel test runs cannot collide. Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

TIMEOUT = 180.0  #: a liveness guard: a loaded 2-core machine once took over 60 s to start Chromium for --dump-dom


def chromium_path() -> str | None:
    """The Chromium binary, or None when none is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def base_flags() -> list[str]:
    flags = ["--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--hide-scrollbars"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run its sandbox as root (CI containers)
    return flags


class Browser:
    """One headless Chromium with one page, driven over ``--remote-debugging-pipe``."""

    def __init__(self, width: int = 1400, height: int = 1000) -> None:
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium is not installed")
        self.profile = tempfile.mkdtemp(prefix="edge-seg-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds() -> None:  # in the child: the protocol's fds 3 (commands in) and 4 (answers out)
            # copied above 10 first, so that neither is overwritten and dup2 makes both inheritable
            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        cmd = [
            exe,
            *base_flags(),
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            cmd, preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.dialogs: list[str] = []  #: messages of alert(), confirm(), ... the page opened (dismissed)
        self.session = ""
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)
        self.call("Network.enable", session=True)

    # -- the protocol -------------------------------------------------------------------------------
    def _send(self, message: dict[str, Any]) -> None:
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium exited (code {self.proc.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if message.get("method") == "Page.javascriptDialogOpening":  # alert() would block the page: note, dismiss
            self.dialogs.append(message["params"].get("message", ""))
            self._next_id += 1
            self._send(
                {
                    "id": self._next_id,
                    "method": "Page.handleJavaScriptDialog",
                    "params": {"accept": False},
                    "sessionId": self.session,
                }
            )
        return message

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """Send one command (to the page's session when ``session``) and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self._send(message)
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._receive(deadline)
            if event.get("method") == method:
                return event
            self.events.append(event)

    # -- what the tests use -------------------------------------------------------------------------
    def open(self, url: str) -> None:
        """Load ``url`` and wait for its load event."""
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired")

    def requested(self) -> list[str]:
        """Every URL the page asked for since :meth:`open` (the document, its images, ...)."""
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values)."""
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) in the middle of the first element matching ``selector``.

        Waits until that point of the window shows the element (scrolled into view, laid out, not
        covered), so that the click lands on it.
        """
        where = (
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
            "e.scrollIntoView({block: 'center'}); "
            "const r = e.getBoundingClientRect(), x = r.x + r.width / 2, y = r.y + r.height / 2; "
            "const hit = document.elementFromPoint(x, y); return hit && e.contains(hit) ? [x, y] : null; })()"
        )
        deadline = time.monotonic() + TIMEOUT
        while (box := self.js(where)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{selector} never showed at its own place in the window")
            time.sleep(0.05)
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path) -> Path:
        import base64

        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dump_dom(url: str) -> str:
    """The DOM after the page's scripts ran, as ``chromium --headless --dump-dom`` prints it."""
    exe = chromium_path()
    if exe is None:
        raise RuntimeError("chromium is not installed")
    with tempfile.TemporaryDirectory(prefix="edge-seg-chromium-") as profile:
        done = subprocess.run(
            [exe, *base_flags(), f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
    return done.stdout


def screenshot(url: str, path: Path, width: int = 1400, height: int = 1000) -> Path:
    """``chromium --headless --screenshot``: the page as a PNG."""
    exe = chromium_path()
    if exe is None:
        raise RuntimeError("chromium is not installed")
    with tempfile.TemporaryDirectory(prefix="edge-seg-chromium-") as profile:
        subprocess.run(
            [
                exe,
                *base_flags(),
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={path}",
                url,
            ],
            capture_output=True,
            timeout=TIMEOUT,
            check=True,
        )
    return path
