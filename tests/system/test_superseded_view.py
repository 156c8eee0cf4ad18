"""A superseded job as callers see it on the running stack: the job JSON, GetJobStatus
(fields appended, so old clients read the rest unchanged) and `otel-worker status` name the
successor, and the successor names the job it replaces."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import urllib3

from shared.dev.stack import REPO_ROOT
from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc
from tests.stack import Stack


def _otel_worker(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "otel-worker"), *argv],
        env={**os.environ, "INGRESS_ADDRESS": stack.url("ingress")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
    )


def _completed(stack: Stack, key: str) -> str:
    reply = urllib3.request(
        "POST",
        stack.url("submit"),
        json={"date": "2024-03-21", "device_id": "phone3", "idempotency_key": key},
    )
    assert reply.status in (200, 202), reply.data
    job_id: str = reply.json()["job"]["job_id"]
    assert stack.wait_finished(job_id).status == "completed"
    return job_id


def test_a_superseded_job_names_its_successor_everywhere(stack: Stack) -> None:
    key = f"superseded-{uuid.uuid4()}"
    old = _completed(stack, key)
    new = _completed(stack, f"successor-{uuid.uuid4()}")
    # Before: neither names the other.
    assert (stack.job(old).superseded_by, stack.job(old).supersedes) == (None, None)
    with grpc.insecure_channel(stack.url("ingress")) as channel:
        stub = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]
        standing = stub.GetJobStatus(pb.GetJobStatusRequest(job_id=old))
    assert (standing.superseded_by, standing.supersedes) == ("", "")
    assert "superseded" not in _otel_worker(stack, "status", old).stdout
    # What the late-fix check records when it replaces a job.
    with stack.db() as conn:
        conn.execute("UPDATE otel_worker.jobs SET supersedes = %s WHERE id = %s", (old, new))
        conn.execute("UPDATE otel_worker.jobs SET superseded_by = %s WHERE id = %s", (new, old))
    assert str(stack.job(old).superseded_by) == new
    assert str(stack.job(new).supersedes) == old
    with grpc.insecure_channel(stack.url("ingress")) as channel:
        stub = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]
        replaced = stub.GetJobStatus(pb.GetJobStatusRequest(job_id=old))
        successor = stub.GetJobStatus(pb.GetJobStatusRequest(job_id=new))
    assert (replaced.status, replaced.superseded_by, replaced.supersedes) == ("completed", new, "")
    assert (successor.superseded_by, successor.supersedes) == ("", old)
    assert replaced.result.total_distance_km == standing.result.total_distance_km
    status = _otel_worker(stack, "status", old)
    assert status.returncode == 0, status.stderr
    assert f"superseded by {new} (late fixes moved its figures)" in status.stdout
    assert f"supersedes {old}" in _otel_worker(stack, "status", new).stdout
    # Asking again with the old idempotency key gets the old job, naming its successor.
    again = urllib3.request(
        "POST",
        stack.url("submit"),
        json={"date": "2024-03-21", "device_id": "phone3", "idempotency_key": key},
    )
    assert again.json()["job"]["job_id"] == old
    assert again.json()["job"]["superseded_by"] == new
