"""Open a page in headless Chromium (Debian's `chromium`) and report what a reader would see: the decoded
size and on-page box of every image, a full-page screenshot, and the console errors (CSP violations,
failed loads, script errors). Talks the DevTools protocol over --remote-debugging-pipe (fd 3 in, fd 4 out,
NUL-separated JSON), so no websocket client or browser-driver package is needed."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

IMAGES_JS = """JSON.stringify(Array.from(document.images).map(i => {
  const r = i.getBoundingClientRect();
  return {alt: i.alt, chart: i.dataset.chart || null, src: i.src.slice(0, 30), complete: i.complete,
          naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,
          x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height};
}))"""


class _Pipe:
    def __init__(self, proc, write_fd: int, read_fd: int):
        self.proc, self.w, self.r = proc, write_fd, read_fd
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            if time.time() > deadline:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.r, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed the DevTools pipe (exit {self.proc.poll()})")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        deadline = time.time() + timeout
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        while True:
            e = self._read_message(deadline)
            if e.get("method") == method:
                return e
            self.events.append(e)


def render_page(html: Path, width: int = 1280, height: int = 900) -> dict:
    """{"images": [...], "errors": [console/log errors], "screenshot": PNG bytes of the whole page}."""
    assert CHROMIUM, "chromium is not installed"
    cmd_r, cmd_w = os.pipe()
    res_r, res_w = os.pipe()

    # Chromium reads the protocol from fd 3 and writes to fd 4: a small exec trampoline puts the pipe ends
    # there (a pipe end may itself be fd 3 or 4 in this process, so they move up first)
    high_r, high_w = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(res_w, fcntl.F_DUPFD, 10)
    os.close(cmd_r)
    os.close(res_w)
    profile = tempfile.mkdtemp(prefix="edgecomp-chromium-")
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--remote-debugging-pipe", f"--user-data-dir={profile}", f"--window-size={width},{height}"]
    trampoline = (f"import os, sys; os.dup2({high_r}, 3); os.dup2({high_w}, 4); os.close({high_r}); "
                  f"os.close({high_w}); os.execv(sys.argv[1], sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", trampoline, *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            pass_fds=(high_r, high_w))
    os.close(high_r)
    os.close(high_w)
    pipe = _Pipe(proc, cmd_w, res_r)
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            pipe.call(f"{domain}.enable", session=session)
        pipe.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=session)
        pipe.call("Page.navigate", {"url": Path(html).resolve().as_uri()}, session=session)
        pipe.wait_event("Page.loadEventFired")
        images = json.loads(pipe.call("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True},
                                      session=session)["result"]["value"])
        size = json.loads(pipe.call("Runtime.evaluate", {
            "expression": "JSON.stringify([document.documentElement.scrollWidth, document.documentElement.scrollHeight])",
            "returnByValue": True}, session=session)["result"]["value"])
        shot = pipe.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}}, session=session)
        errors = []
        for e in pipe.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                errors.append(p.get("exceptionDetails", {}).get("text", "exception"))
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                errors.append(p["entry"].get("text", ""))
        try:
            pipe.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError):
            pass
        return {"images": images, "errors": errors, "screenshot": base64.b64decode(shot["data"])}
    finally:
        os.close(cmd_w)
        os.close(res_r)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def blank_fraction(screenshot: bytes, box: dict) -> float:
    """The share of (near-)white pixels in an on-page box of the screenshot: 1.0 is an empty area."""
    import io

    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(screenshot)).convert("L"), dtype=np.int16)
    x0, y0 = int(box["x"]), int(box["y"])
    crop = img[y0:y0 + int(box["height"]), x0:x0 + int(box["width"])]
    if crop.size == 0:
        return 1.0
    return float((crop > 245).mean())
