"""A headless Chromium driven over the DevTools protocol (websockets' sync client), for testing HTML pages.

    with Chromium() as browser:
        page = browser.open(Path("runs/quickstart/report.html"), screenshot=Path("shot.png"))
        page.errors      # console errors, uncaught exceptions, failed loads (each a sentence)
        page.links       # every <a href> of the page, resolved
        page.media       # every <img> / <video>: {"tag", "src", "ok", "why"}

`find_chromium()` is the executable (Debian's `chromium`, installed by scripts/test.sh), or None.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    if os.environ.get("WAM_CHROMIUM"):
        return os.environ["WAM_CHROMIUM"]
    return next((p for p in map(shutil.which, NAMES) if p), None)


@dataclass
class Page:
    url: str
    errors: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    media: list[dict] = field(default_factory=list)
    title: str = ""


# in the page: wait (bounded) until every image and video has loaded or failed, then report each
MEDIA_JS = """
(async () => {
  const deadline = Date.now() + %d;
  const media = [...document.images, ...document.querySelectorAll('video')];
  const settled = m => m.tagName === 'IMG' ? m.complete : (m.error !== null || m.readyState >= 2);
  while (Date.now() < deadline && !media.every(settled)) await new Promise(r => setTimeout(r, 50));
  return JSON.stringify({
    title: document.title,
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    media: media.map(m => m.tagName === 'IMG'
      ? {tag: 'img', src: m.currentSrc || m.src, ok: m.complete && m.naturalWidth > 0,
         why: m.complete ? (m.naturalWidth > 0 ? '' : 'did not decode or was not found') : 'still loading'}
      : {tag: 'video', src: m.currentSrc || m.src, ok: m.error === null && m.readyState >= 2 && m.videoWidth > 0,
         why: m.error ? ('media error ' + m.error.code + ' ' + (m.error.message || '')) :
              (m.readyState >= 2 ? '' : 'first frame not decoded (readyState ' + m.readyState + ')')}),
  });
})()
"""


class Chromium:
    """One headless browser process; `open` loads a page in a fresh tab and reports what went wrong."""

    def __init__(self, executable: str | None = None, timeout: float = 60.0):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise FileNotFoundError("no chromium executable (apt-get install chromium)")
        self.timeout = timeout
        self._id = 0

    def __enter__(self) -> Chromium:
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="wam-chromium-")
        args = [
            self.executable,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--mute-audio",
            "--disable-extensions",
            "--autoplay-policy=no-user-gesture-required",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"chromium exited with {self.proc.returncode} before listening: {err}")
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise TimeoutError(f"chromium did not open its DevTools port within {self.timeout:.0f} s")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(
            connect(f"ws://127.0.0.1:{port}{path}", max_size=64 << 20, open_timeout=self.timeout, proxy=None)
        )
        self.events: list[dict] = []
        return self

    def __exit__(self, *exc) -> None:
        try:
            if getattr(self, "_stack", None) is not None:
                self._stack.close()
        finally:
            self.proc.kill()
            self.proc.wait(timeout=30)
            shutil.rmtree(self.profile, ignore_errors=True)

    # -- the protocol: one websocket to the browser, tabs addressed by session id

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + self.timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        for e in self.events:
            if e.get("method") == method and e.get("sessionId") == session:
                return e
        while time.monotonic() < deadline:
            e = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            self.events.append(e)
            if e.get("method") == method and e.get("sessionId") == session:
                return e
        raise TimeoutError(f"no {method} within {timeout or self.timeout:.0f} s")

    def open(self, path: Path | str, *, screenshot: Path | None = None, media_wait_ms: int = 10000) -> Page:
        """Load `path` (a file, or an http:// URL) in a new tab; gather its console errors, failed requests, links
        and media."""
        url = path if isinstance(path, str) and path.startswith("http") else Path(path).resolve().as_uri()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable", session=session)
            self.events = [e for e in self.events if e.get("sessionId") != session]
            self.call("Page.navigate", {"url": url}, session=session)
            self.wait_for("Page.loadEventFired", session)
            res = self.call(
                "Runtime.evaluate",
                {"expression": MEDIA_JS % media_wait_ms, "awaitPromise": True, "returnByValue": True},
                session=session,
            )
            if "exceptionDetails" in res:
                raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
            found = json.loads(res["result"]["value"])
            page = Page(url, links=found["links"], media=found["media"], title=found["title"])
            if screenshot is not None:
                self.call(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                    session=session,
                )
                shot = self.call(
                    "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session
                )
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            self.call("Runtime.evaluate", {"expression": "1"}, session=session)  # (flushes pending events)
            page.errors = _errors([e for e in self.events if e.get("sessionId") == session])
            return page
        finally:
            self.call("Target.closeTarget", {"targetId": target})


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append(f"uncaught exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            out.append(f"log error: {p['entry'].get('text')} ({p['entry'].get('url', '')})")
        elif m == "Network.loadingFailed" and not p.get("canceled"):
            out.append(f"failed to load a resource: {p.get('errorText')} (request {p.get('requestId')})")
    return out
