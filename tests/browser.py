"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol: open a page,
wait for a condition, read what the page logged, evaluate, and take screenshots."""

from __future__ import annotations

import base64
import http.server
import itertools
import json
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import urllib3
import websocket

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
"""Screenshots of the tests, kept for a person to look at (ignored by git)."""


def chromium() -> str:
    """The browser's path; the test fails naming how to install it when it is missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed: run `make system-deps`")
    return found


@dataclass
class Page:
    """One tab, with every console message, log entry and uncaught exception it produced."""

    socket: websocket.WebSocket
    messages: list[dict[str, Any]] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (events met meanwhile are kept)."""
        call = next(self._ids)
        self.socket.send(json.dumps({"id": call, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == call:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self.messages.append(message)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Poll until `expression` is truthy in the page; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.evaluate(expression):
                return value
            time.sleep(0.1)
        raise AssertionError(f"not true after {timeout} s: {expression}")

    def errors(self) -> list[str]:
        """Console errors and warnings, log errors (failed loads among them) and uncaught
        exceptions, as text."""
        self.send("Runtime.evaluate", expression="0")  # collect what arrived so far
        found = []
        for message in self.messages:
            params = message.get("params", {})
            if message.get("method") == "Runtime.consoleAPICalled" and params["type"] in (
                "error",
                "warning",
                "assert",
            ):
                found.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
            elif message.get("method") == "Log.entryAdded" and params["entry"]["level"] in (
                "error",
                "warning",
            ):
                entry = params["entry"]
                found.append(f"{entry['text']} {entry.get('url', '')}".strip())
            elif message.get("method") == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description", details["text"]))
        return found

    def screenshot(self, path: Path, selector: str | None = None) -> Path:
        """The whole page, or the element `selector` finds, as a PNG at `path`."""
        clip = {}
        if selector:
            box = self.evaluate(
                f"(function (r) {{ return {{x: r.left + scrollX - 8, y: r.top + scrollY - 8,"
                f" width: r.width + 16, height: r.height + 16, scale: 1}}; }})"
                f"(document.querySelector({json.dumps(selector)}).getBoundingClientRect())"
            )
            clip = {"clip": box}
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True, **clip)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@contextmanager
def browser(profile: Path, width: int = 1100, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium on a free loopback port; yields `open(url) -> Page`, each page
    loaded (its load event fired) with its messages recorded from the start."""
    process = subprocess.Popen(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sockets: list[websocket.WebSocket] = []
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.exists() and active.read_text().count("\n") >= 1):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start (exit {process.poll()})")
            time.sleep(0.1)
        port = int(active.read_text().split()[0])

        def open_page(url: str) -> Page:
            target = urllib3.request("PUT", f"http://127.0.0.1:{port}/json/new?about:blank").json()
            socket = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=60)
            sockets.append(socket)
            page = Page(socket)
            for domain in ("Page", "Runtime", "Log"):
                page.send(f"{domain}.enable")
            page.send(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            page.send("Page.navigate", url=url)
            deadline = time.monotonic() + 60
            while not any(m.get("method") == "Page.loadEventFired" for m in page.messages):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{url} did not load")
                page.messages.append(json.loads(socket.recv()))
            return page

        yield open_page
    finally:
        for socket in sockets:
            socket.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _png(width: int, height: int, rows: list[bytes]) -> bytes:
    """An 8-bit RGB PNG of `rows` (each `width` pixels of 3 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\0" + row for row in rows))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def tile(z: int, x: int, y: int) -> bytes:
    """A 256-pixel map tile: a pale land colour that alternates like a chequerboard (so the
    tiles show in a screenshot) with a darker line along its top and left edges."""
    land = (232, 226, 208) if (x + y) % 2 else (222, 232, 214)
    edge = bytes((170, 170, 170))
    plain_row = edge + bytes(land) * 255
    return _png(256, 256, [edge * 256] + [plain_row] * 255)


class TileServer:
    """Generated tiles over HTTP on loopback (`/{z}/{x}/{y}.png`), counting what it served."""

    def __init__(self) -> None:
        served: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                match = re.fullmatch(r"/(\d+)/(\d+)/(\d+)\.png", self.path)
                if match is None:
                    self.send_error(404)
                    return
                body = tile(*map(int, match.groups()))
                served.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.served = served
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.template = f"http://127.0.0.1:{self.server.server_address[1]}/{{z}}/{{x}}/{{y}}.png"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
