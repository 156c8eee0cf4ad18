"""Each function starts as its own process, as Knative runs it, and answers its health check."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import urllib3

from shared import config
from shared.dev.stack import (
    HTTP_FUNCTIONS,
    ServiceProcess,
    free_ports,
    grpc_serving,
    http_function,
    http_status,
    ingress_process,
    wait_until,
)


@pytest.fixture
def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in config.variable_names()}


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        process.stop()


def _live_without_database(
    name: str, base_env: dict[str, str], processes: list[ServiceProcess]
) -> tuple[ServiceProcess, int]:
    """The function `name` started against a port where no database listens, once live;
    and that port."""
    port, dead = free_ports(2)
    env = {
        **base_env,
        "MINIO_ACCESS_KEY": "k",
        "MINIO_SECRET_KEY": "s",
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{dead}/none",
        "DB_STARTUP_RETRY_SECONDS": "0",
    }
    service = http_function(name, port, env).start()
    processes.append(service)
    wait_until(lambda: http_status(f"{service.url}/healthz") == 200, 30, name)
    return service, dead


@pytest.mark.parametrize("name", ["submit", "compute"])
def test_http_function_is_live_but_not_ready_without_its_database(
    name: str, base_env: dict[str, str], processes: list[ServiceProcess]
) -> None:
    service, dead = _live_without_database(name, base_env, processes)
    response = urllib3.request("GET", f"{service.url}/readyz")
    assert response.status == 503
    # It says only that: no dependency, host or port (those go to its log).
    assert json.loads(response.data) == {"status": "NOT_SERVING"}
    assert str(dead) not in response.data.decode()
    assert service.stop() == 0


def test_status_stays_ready_without_its_database_and_takes_dead_letters(
    base_env: dict[str, str], processes: list[ServiceProcess]
) -> None:
    service, dead = _live_without_database("status", base_env, processes)
    assert http_status(f"{service.url}/readyz") == 200
    letter = urllib3.request(
        "POST",
        f"{service.url}/dead-letters",
        body=b'{"job_id": "8c1b0c43-6f8e-4a8e-9a55-0d3c2f9f4b1e"}',
        headers={
            "ce-specversion": "1.0",
            "ce-id": "lost-1",
            "ce-source": "/otel-worker/submit",
            "ce-type": "dev.otelworker.job.queued.v1",
            "content-type": "application/json",
        },
    )
    assert letter.status == 202
    # Its job endpoints say at once that the database is down.
    job = urllib3.request("GET", f"{service.url}/jobs/8c1b0c43-6f8e-4a8e-9a55-0d3c2f9f4b1e")
    assert job.status == 503
    assert f"127.0.0.1:{dead}" in json.loads(job.data)["error"]
    assert service.stop() == 0


@pytest.mark.parametrize("name", HTTP_FUNCTIONS)
def test_http_function_with_bad_config_exits_naming_the_variable(
    name: str, base_env: dict[str, str], processes: list[ServiceProcess]
) -> None:
    (port,) = free_ports(1)
    env = {**base_env, "MINIO_ACCESS_KEY": "k", "MINIO_SECRET_KEY": "s", "POSTGRES_PORT": "99999"}
    service = http_function(name, port, env)
    service.start(stdout=subprocess.PIPE)
    processes.append(service)
    assert service.process is not None
    output, _ = service.process.communicate(timeout=60)
    assert service.process.returncode != 0
    assert f"{name}: invalid configuration: POSTGRES_PORT".encode() in output


@pytest.mark.parametrize(
    ("name", "path", "limit"),
    [("submit", "/", 64 * 1024), ("compute", "/", 64 * 1024), ("status", "/dead-letters", 2**20)],
)
def test_a_body_over_the_functions_limit_is_refused_unread_with_413(
    name: str, path: str, limit: int, base_env: dict[str, str], processes: list[ServiceProcess]
) -> None:
    service, _ = _live_without_database(name, base_env, processes)
    url = f"{service.url}{path}"

    def post(size: int, streamed: bool) -> urllib3.BaseHTTPResponse:
        body = b"x" * size
        # A generator is sent chunked: no Content-Length to refuse it by.
        sent = (body[i : i + 8192] for i in range(0, size, 8192)) if streamed else body
        return urllib3.request("POST", url, body=sent, retries=False, timeout=30)

    for streamed in (False, True):
        for size in (limit + 1, 20 * 2**20):
            response = post(size, streamed)
            assert response.status == 413, (size, streamed, response.data)
            assert response.json() == {
                "error": f"request body: larger than the {limit} bytes accepted here",
                "status": 413,
            }
        at_limit = post(limit, streamed)
        assert at_limit.status == 400, at_limit.data  # read, and refused as no CloudEvent/JSON
    assert http_status(f"{service.url}/healthz") == 200
    assert service.stop() == 0


def test_ingress_serves_grpc_health_and_drains_on_sigterm(
    base_env: dict[str, str], processes: list[ServiceProcess]
) -> None:
    port, upstream = free_ports(2)
    env = {
        **base_env,
        "SUBMIT_URL": f"http://127.0.0.1:{upstream}",
        "STATUS_URL": f"http://127.0.0.1:{upstream}",
        "GRPC_ALLOW_UNAUTHENTICATED": "true",
    }
    service = ingress_process(port, env).start()
    processes.append(service)
    wait_until(lambda: grpc_serving(f"127.0.0.1:{port}"), 30, "ingress", ignore=(grpc.RpcError,))
    assert service.stop() == 0


def test_ingress_without_its_upstreams_configured_exits_naming_them(
    base_env: dict[str, str], processes: list[ServiceProcess]
) -> None:
    (port,) = free_ports(1)
    service = ingress_process(port, {**base_env, "GRPC_AUTH_TOKEN": "t"})
    service.start(stdout=subprocess.PIPE)
    processes.append(service)
    assert service.process is not None
    output, _ = service.process.communicate(timeout=30)
    assert service.process.returncode == 2
    assert b"SUBMIT_URL: is required but not set" in output
    assert b"Traceback" not in output


def test_metrics_endpoint_serves_prometheus_text_only_when_enabled(
    base_env: dict[str, str], processes: list[ServiceProcess]
) -> None:
    port, dead, other = free_ports(3)
    env = {
        **base_env,
        "MINIO_ACCESS_KEY": "k",
        "MINIO_SECRET_KEY": "s",
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{dead}/none",
        "DB_STARTUP_RETRY_SECONDS": "0",
        "OTEL_SERVICE_NAME": "otel-worker-status",
    }
    enabled = http_function("status", port, {**env, "METRICS_PROMETHEUS": "true"}).start()
    # submit, unlike status, serves POST on every path: /metrics must still be a 404.
    disabled = http_function("submit", other, env).start()
    processes.extend([enabled, disabled])
    for service in (enabled, disabled):
        wait_until(
            lambda service=service: http_status(f"{service.url}/healthz") == 200, 30, "started"
        )
        urllib3.request("GET", f"{service.url}/readyz")  # starts telemetry
    metrics = urllib3.request("GET", f"{enabled.url}/metrics")
    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert b"# TYPE process_resident_memory_bytes gauge" in metrics.data
    off = urllib3.request("GET", f"{disabled.url}/metrics")
    assert off.status == 404
    assert "METRICS_PROMETHEUS" in off.json()["error"]


@pytest.mark.parametrize(
    ("retry", "interrupt", "code", "message"),
    [
        ("30", True, 130, "interrupted while starting"),
        ("0", False, 3, "cannot connect to PostgreSQL at 127.0.0.1:"),
    ],
)
def test_otel_worker_dev_stops_cleanly_when_its_start_fails_or_is_interrupted(
    retry: str, interrupt: bool, code: int, message: str
) -> None:
    (dead,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if k not in config.variable_names()} | {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{dead}/none",
        "DB_STARTUP_RETRY_SECONDS": retry,
    }
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "otel-worker"), "dev"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if interrupt:
        # Inside migrate's start-up retry: once it says so (after a fixed delay, a loaded
        # machine may still be importing, and Python's own KeyboardInterrupt is no test).
        assert process.stdout is not None
        for line in process.stdout:
            if "not reachable" in line:
                break
        process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == code, err
    assert message in err
    assert "Traceback" not in err


def _half_open(url: str, count: int) -> list[socket.socket]:
    """`count` connections that each send part of a request head and then stay silent."""
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(count):
        client = socket.create_connection((host, int(port)), timeout=5)
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        sockets.append(client)
    return sockets


def test_half_open_connections_do_not_starve_the_function(
    base_env: dict[str, str], processes: list[ServiceProcess]
) -> None:
    service, _ = _live_without_database("status", {**base_env, "THREADS": "4"}, processes)
    stalled = _half_open(service.url, 9)
    try:
        started = time.monotonic()
        assert http_status(f"{service.url}/healthz") == 200
        assert time.monotonic() - started < 2
    finally:
        for client in stalled:
            client.close()
    assert service.stop() == 0


def test_a_request_line_or_header_over_the_limit_is_refused(
    base_env: dict[str, str], processes: list[ServiceProcess]
) -> None:
    service, _ = _live_without_database("status", base_env, processes)
    long_path = urllib3.request("GET", f"{service.url}/jobs/{'x' * 5000}", retries=False)
    assert long_path.status == 414
    header = urllib3.request(
        "GET", f"{service.url}/healthz", headers={"X-Big": "y" * 9000}, retries=False
    )
    assert header.status == 431, header.status
    # An 8 MB request line is refused without being read to its end.
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(b"GET /" + b"a" * 65536)
        with contextlib.suppress(OSError):  # the server may close while we still send
            client.sendall(b"a" * (8 * 2**20))
        assert client.recv(64).startswith(b"HTTP/1.1 414")
    assert http_status(f"{service.url}/healthz") == 200
