"""The ingress's plain-HTTP downloads against real HTTP peers on loopback standing in for
status and the object store: what it relays, and how it fails when they do."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from shared.config import UpstreamSettings
from shared.dev.stack import free_ports
from shared.downloads import DownloadRelay
from shared.grpc_adapter import Upstream
from tests.conftest import RecordingServer

NAME = "distance_20240312_phone1_8ab08be1.csv"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with _OPENER.open(url, timeout=10) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def _relay(status_url: str, proxy: bool = False, timeout: float = 5.0) -> DownloadRelay:
    upstream = Upstream(
        UpstreamSettings(
            submit_url="http://127.0.0.1:9",  # type: ignore[arg-type]
            status_url=status_url,  # type: ignore[arg-type]
            upstream_timeout_seconds=timeout,
        )
    )
    relay = DownloadRelay(upstream, 0, proxy)
    relay.start()
    return relay


@pytest.fixture
def status() -> Iterator[RecordingServer]:
    server = RecordingServer().start()
    yield server
    server.stop()


def test_status_redirect_and_errors_are_passed_on(status: RecordingServer) -> None:
    signed = "http://objects.example:9000/otel-worker/jobs/x/" + NAME + "?X-Amz-Signature=abc"
    status.script = [
        (302, {"Location": signed}, b""),
        (409, {"Content-Type": "application/json"}, b'{"error": "job x is queued"}'),
    ]
    relay = _relay(status.url)
    try:
        base = f"http://127.0.0.1:{relay.port}"
        code, headers, _ = _get(f"{base}/download/{NAME}")
        assert (code, headers["Location"], headers["Cache-Control"]) == (302, signed, "no-store")
        code, _, body = _get(f"{base}/download/{NAME}")
        assert (code, json.loads(body)) == (409, {"error": "job x is queued"})
        # The name reached status as one path segment, whatever it holds.
        assert [r["path"] for r in status.received] == [f"/download/{NAME}"] * 2
        code, _, body = _get(f"{base}/download/a%2F..%2Fjobs")
        assert status.received[-1]["path"] == "/download/a%2F..%2Fjobs"
        assert _get(f"{base}/healthz")[0] == 200
        assert _get(f"{base}/download/")[0] == 404
    finally:
        relay.stop()


def test_an_unreachable_or_slow_status_is_503_or_504(status: RecordingServer) -> None:
    (closed,) = free_ports(1)
    down = _relay(f"http://127.0.0.1:{closed}")
    status.delay = 1.0
    slow = _relay(status.url, timeout=0.3)
    try:
        code, _, body = _get(f"http://127.0.0.1:{down.port}/download/{NAME}")
        assert code == 503
        assert json.loads(body)["error"].startswith("status is unreachable")
        code, _, body = _get(f"http://127.0.0.1:{slow.port}/download/{NAME}")
        assert code == 504
        assert "status did not answer within" in json.loads(body)["error"]
    finally:
        down.stop()
        slow.stop()


def test_with_proxy_a_store_that_refuses_or_is_down_is_502(status: RecordingServer) -> None:
    store = RecordingServer(default=(403, {}, b"<Error>AccessDenied</Error>")).start()
    (closed,) = free_ports(1)
    status.script = [
        (302, {"Location": f"{store.url}/otel-worker/{NAME}?sig"}, b""),
        (302, {"Location": f"http://127.0.0.1:{closed}/otel-worker/{NAME}?sig"}, b""),
        (200, {"Content-Type": "text/csv"}, b"a,b\n"),
    ]
    relay = _relay(status.url, proxy=True)
    try:
        base = f"http://127.0.0.1:{relay.port}/download/{NAME}"
        code, _, body = _get(base)
        assert (code, json.loads(body)["error"]) == (502, "the object store answered HTTP 403")
        code, _, body = _get(base)
        assert code == 502
        assert json.loads(body)["error"].startswith("the object store is unreachable")
        # An answer of status that is no redirect is passed on as it is.
        assert _get(base)[::2] == (200, b"a,b\n")
    finally:
        relay.stop()
        store.stop()


def test_a_taken_port_is_refused_naming_it() -> None:
    relay = _relay("http://127.0.0.1:9")
    try:
        with pytest.raises(OSError, match=f"cannot listen on HTTP_PORT {relay.port}"):
            DownloadRelay(relay.upstream, relay.port, False)
    finally:
        relay.stop()
