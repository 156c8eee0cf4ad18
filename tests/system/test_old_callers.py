"""Callers of the original service, against the whole system: they download the CSV from
the gRPC host's HTTP port as they always did, work without a token exactly where the docs
say they do, and their trace id reaches submit's and compute's logs with no exporter."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_tools import protoc

from shared import config
from shared.dev.stack import REPO_ROOT, ServiceProcess, free_ports, grpc_serving, ingress_process
from shared.dev.stack import wait_until as wait_for
from shared.export import CSV_COLUMNS, header
from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc
from tests.conftest import Database, S3Server
from tests.stack import Stack, start_stack
from tests.system.test_telemetry import Captured

LEGACY = REPO_ROOT / "tests" / "legacy"


@dataclass
class OldWorld:
    stack: Stack
    log: Captured
    http_port: int
    stubs: Path


@pytest.fixture(scope="module")
def world(
    seeded: Database, s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OldWorld]:
    """The system with its ingress set up as the compat overlay runs it: no token on
    purpose, downloads on HTTP_PORT; INFO logs kept; no OTLP endpoint."""
    stubs = tmp_path_factory.mktemp("legacy-stubs")
    include = Path(protoc.__file__).parent / "_proto"
    generated = protoc.main(
        [
            "protoc",
            f"-I{LEGACY}",
            f"-I{include}",
            f"--python_out={stubs}",
            f"--grpc_python_out={stubs}",
            "distance/v1/distance.proto",
        ]
    )
    assert generated == 0
    (http_port,) = free_ports(1)
    log = Captured()
    stack = start_stack(
        seeded,
        s3,
        out=log,
        LOG_LEVEL="INFO",
        HTTP_PORT=str(http_port),
        GRPC_ALLOW_UNAUTHENTICATED="true",
    )
    yield OldWorld(stack, log, http_port, stubs)
    stack.supervisor.stop()


def _old_caller(
    world: OldWorld, endpoint: str, http_port: int, out: Path, *extra: str
) -> dict[str, Any]:
    """Run the Flask-shaped caller in its own process; what it saw."""
    run = subprocess.run(
        [
            sys.executable,
            str(LEGACY / "download_caller.py"),
            endpoint,
            f"--http-port={http_port}",
            f"--out={out}",
            *extra,
        ],
        env={**os.environ, "PYTHONPATH": str(world.stubs)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, (run.stderr, "\n".join(world.log.lines[-20:]))
    seen: dict[str, Any] = json.loads(run.stdout)
    return seen


def _stored_csv(world: OldWorld, job_id: str) -> bytes:
    job = world.stack.job(job_id)
    assert job.csv_key is not None
    return bytes(world.stack.s3.client().get_object(world.stack.bucket, job.csv_key).read())


@contextlib.contextmanager
def _extra_ingress(world: OldWorld, **settings: str) -> Iterator[tuple[str, int]]:
    """Another ingress in front of the same submit and status (another Deployment of it),
    with `settings`; yields its gRPC address and HTTP port."""
    grpc_port, http_port = free_ports(2)
    keep = {k: v for k, v in os.environ.items() if k not in config.variable_names()}
    ingress = ingress_process(
        grpc_port,
        {
            **keep,
            "SUBMIT_URL": world.stack.url("submit"),
            "STATUS_URL": world.stack.url("status"),
            "HTTP_PORT": str(http_port),
            "LOG_LEVEL": "WARNING",
            **settings,
        },
    )
    ingress.start(stdout=subprocess.DEVNULL)
    try:
        address = f"127.0.0.1:{grpc_port}"
        wait_for(
            lambda: _serving(ingress, address), 20, "the extra ingress", ignore=(grpc.RpcError,)
        )
        yield address, http_port
    finally:
        ingress.stop()


def _serving(ingress: ServiceProcess, address: str) -> bool:
    assert ingress.alive(), "the ingress exited at start"
    return grpc_serving(address)


def _lines(log: Captured, service: str) -> list[dict[str, Any]]:
    """The JSON log lines of `service` in the stack's merged log."""
    found = []
    for line in log.lines:
        prefix, _, text = line.partition("|")
        if prefix.strip() == service and text.strip().startswith("{"):
            found.append(json.loads(text))
    return found


def test_the_old_caller_downloads_the_csv_from_the_grpc_host(
    world: OldWorld, tmp_path: Path
) -> None:
    """submit over gRPC, poll every few seconds, GET http://{grpc host}:{HTTP_PORT}/download/
    {basename} following redirects: the job's CSV, byte for byte, and the caller's trace id
    in the logs of submit and compute although no span is exported."""
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    out = tmp_path / "downloaded.csv"
    seen = _old_caller(
        world,
        world.stack.url("ingress"),
        world.http_port,
        out,
        "--date=2024-03-14",
        "--device=phone2",
        "--poll-seconds=2",
        f"--traceparent={traceparent}",
    )
    assert seen.get("status") == "completed", seen
    assert seen["http_status"] == 200, seen
    # Redirected to a presigned URL of the object store, which served it.
    assert "X-Amz-Signature=" in seen["final_url"]
    downloaded = out.read_bytes()
    assert downloaded == _stored_csv(world, seen["job_id"])
    assert downloaded.startswith(header(CSV_COLUMNS))
    assert downloaded.count(b"\n") > 100

    def logged(service: str) -> set[str]:
        return {
            line["trace_id"]
            for line in _lines(world.log, service)
            if line.get("job_id") == seen["job_id"] and "trace_id" in line
        }

    wait_for(lambda: trace_id in logged("compute"), 10, "compute's log line")
    assert logged("submit") == {trace_id}
    assert logged("compute") == {trace_id}


def test_downloads_by_job_id_and_their_errors_are_status_answers(world: OldWorld) -> None:
    with grpc.insecure_channel(world.stack.url("ingress")) as channel:
        stub = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]
        queued = stub.CalculateDistanceFromHome(
            pb.CalculateDistanceRequest(date="2024-03-15", device_id="phone1"), timeout=30
        )
    world.stack.wait_finished(queued.job_id)
    base = f"http://127.0.0.1:{world.http_port}"
    with urllib.request.urlopen(f"{base}/download/{queued.job_id}", timeout=30) as response:
        assert response.read() == _stored_csv(world, queued.job_id)

    def refused(path: str, method: str = "GET") -> tuple[int, str]:
        request = urllib.request.Request(f"{base}{path}", method=method)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=30)
        return info.value.code, info.value.read().decode()

    code, body = refused("/download/distance_20240315_phone1_00000000.csv")
    assert code == 404
    assert "no CSV named distance_20240315_phone1_00000000.csv" in json.loads(body)["error"]
    assert refused("/download/not-a-job")[0] == 400
    assert refused("/jobs")[0] == 404  # status's other routes are not reachable here
    assert refused("/download/..%2Fjobs")[0] in {400, 404}
    assert refused(f"/download/{queued.job_id}", method="POST")[0] == 405


def test_with_download_proxy_the_ingress_relays_the_bytes(world: OldWorld, tmp_path: Path) -> None:
    """For callers that cannot reach the object store: the CSV itself, no redirect."""
    with _extra_ingress(world, GRPC_ALLOW_UNAUTHENTICATED="true", DOWNLOAD_PROXY="true") as (
        address,
        http_port,
    ):
        out = tmp_path / "proxied.csv"
        seen = _old_caller(world, address, http_port, out, "--date=2024-03-16", "--poll-seconds=1")
        assert seen.get("status") == "completed", seen
        assert seen["http_status"] == 200
        assert seen["final_url"] == seen["url"]  # not redirected
        assert seen["content_type"].startswith("text/csv")
        assert out.read_bytes() == _stored_csv(world, seen["job_id"])


def test_a_token_less_caller_works_exactly_without_a_token_configured(
    world: OldWorld, tmp_path: Path
) -> None:
    """As docs/DEPLOYMENT.md says: an ingress with no GRPC_AUTH_TOKEN (and
    GRPC_ALLOW_UNAUTHENTICATED=true) serves callers that send none (the first test); one
    with a token refuses them, whatever GRPC_ALLOW_UNAUTHENTICATED says, and serves the
    token's holders."""
    token = secrets.token_urlsafe(24)
    for allow in ("false", "true"):
        with _extra_ingress(world, GRPC_AUTH_TOKEN=token, GRPC_ALLOW_UNAUTHENTICATED=allow) as (
            address,
            http_port,
        ):
            seen = _old_caller(world, address, http_port, tmp_path / "x.csv", "--date=2024-03-17")
            assert seen == {"grpc_error": "UNAUTHENTICATED"}, allow
            with grpc.insecure_channel(address) as channel:
                stub = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]
                listed = stub.ListJobs(
                    pb.ListJobsRequest(limit=1),
                    timeout=30,
                    metadata=[("authorization", f"Bearer {token}")],
                )
            assert listed.total_count >= 1
