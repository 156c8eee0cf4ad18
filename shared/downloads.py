"""The ingress's plain-HTTP downloads, for callers of the original service.

The original served gRPC on GRPC_PORT and the CSVs on HTTP_PORT (8080) from one process,
and its callers fetch `http://{grpc host}:8080/download/{basename}`. With `HTTP_PORT` set
the ingress answers `GET /download/{basename}` and `GET /download/{job_id}` there, by
asking status and relaying its answer: a 302 to a fresh presigned URL, or with
`DOWNLOAD_PROXY` the object's bytes, fetched through that URL. Which job a name means,
and whether its CSV exists, is status's to say: the ingress still owns no job logic and
holds no database or object-store credentials.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import grpc

from shared import telemetry
from shared.grpc_adapter import Upstream, UpstreamError

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024
_STATUS_OF: dict[grpc.StatusCode, HTTPStatus] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow download does not hold the process at exit
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer states its length
    server_version = "otel-worker-ingress"
    relay: ClassVar[DownloadRelay]

    def do_GET(self) -> None:
        """`/download/{name}`, relayed from status; `/healthz` for probes."""
        path = urlsplit(self.path).path
        if path == "/healthz":
            self.send_json(HTTPStatus.OK, {"status": "SERVING"})
            return
        parts = path.split("/")
        if len(parts) != 3 or parts[1] != "download" or not parts[2]:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no such resource: {path[:200]}"})
            return
        incoming = self.headers.get("traceparent")
        parent = {"traceparent": incoming} if incoming else None
        with telemetry.span("ingress download", parent=parent):
            self.relay.answer(self, unquote(parts[2]))

    def _refuse_method(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET")
        self.send_header("Content-Length", "0")
        self.end_headers()

    # The names BaseHTTPRequestHandler dispatches to.
    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _refuse_method  # noqa: N815

    def send_json(self, status: HTTPStatus | int, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


class DownloadRelay:
    """The HTTP server of `/download/...` on `port`, in a thread of its own."""

    def __init__(self, upstream: Upstream, port: int, proxy: bool) -> None:
        self.upstream = upstream
        self.proxy = proxy
        handler = type("Handler", (_Handler,), {"relay": self})
        try:
            self._server = _Server(("", port), handler)
        except OSError as exc:
            raise OSError(f"cannot listen on HTTP_PORT {port} ({exc.strerror})") from None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in the background."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="http-downloads", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting; downloads under way end with the process."""
        self._server.shutdown()
        self._server.server_close()

    def answer(self, handler: _Handler, name: str) -> None:
        """status's answer for `name`: its redirect passed on (or followed, with `proxy`),
        its errors as it gave them."""
        try:
            response = self.upstream.download(name, telemetry.traceparent())
        except UpstreamError as exc:
            status = _STATUS_OF.get(exc.code, HTTPStatus.SERVICE_UNAVAILABLE)
            handler.send_json(status, {"error": exc.message})
            return
        location = response.headers.get("Location")
        log.info("download", extra={"download": name[:200], "status_answer": response.status})
        if response.status != HTTPStatus.FOUND or not location:
            # status's own answer (404 no such CSV, 409 not completed yet, 503 ...), as is.
            handler.send_response(response.status)
            handler.send_header(
                "Content-Type", response.headers.get("Content-Type", "application/json")
            )
            handler.send_header("Content-Length", str(len(response.data)))
            handler.end_headers()
            handler.wfile.write(response.data)
            return
        if not self.proxy:
            handler.send_response(HTTPStatus.FOUND)
            handler.send_header("Location", location)
            handler.send_header("Cache-Control", "no-store")  # the link expires
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        self._relay_object(handler, location)

    def _relay_object(self, handler: _Handler, url: str) -> None:
        try:
            stored = self.upstream.fetch(url)
        except UpstreamError as exc:
            handler.send_json(HTTPStatus.BAD_GATEWAY, {"error": exc.message})
            return
        try:
            if stored.status != HTTPStatus.OK:
                handler.send_json(
                    HTTPStatus.BAD_GATEWAY,
                    {"error": f"the object store answered HTTP {stored.status}"},
                )
                return
            basename = urlsplit(url).path.rsplit("/", 1)[-1]
            handler.send_response(HTTPStatus.OK)
            handler.send_header("Content-Type", stored.headers.get("Content-Type", "text/csv"))
            handler.send_header("Content-Disposition", f'attachment; filename="{basename}"')
            length = stored.headers.get("Content-Length")
            if length is not None:
                handler.send_header("Content-Length", length)
            else:
                handler.close_connection = True  # the end of the body is the end of it
            handler.end_headers()
            for chunk in stored.stream(_CHUNK):
                handler.wfile.write(chunk)
        finally:
            stored.release_conn()
