"""Waiting for the outcome instead of polling for it: gRPC's `wait_seconds` and HTTP's
`?wait=` against the whole stack, status hearing of finishes on its direct connection."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
import urllib3

from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc
from tests.stack import Stack


@pytest.fixture
def stub(stack: Stack) -> Iterator[distance_pb2_grpc.DistanceServiceStub]:
    with grpc.insecure_channel(stack.url("ingress")) as channel:
        yield distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]


def _submit(stub: distance_pb2_grpc.DistanceServiceStub, date: str) -> str:
    request = pb.CalculateDistanceRequest(
        date=date, device_id="phone1", idempotency_key=f"wait-{uuid.uuid4()}"
    )
    reply: pb.CalculateDistanceResponse = stub.CalculateDistanceFromHome(request, timeout=10)
    return reply.job_id


def test_one_status_call_waits_for_the_outcome(
    stub: distance_pb2_grpc.DistanceServiceStub,
) -> None:
    job_id = _submit(stub, "2024-03-18")
    answer = stub.GetJobStatus(pb.GetJobStatusRequest(job_id=job_id, wait_seconds=20), timeout=30)
    assert answer.status == "completed"
    assert answer.result.total_locations > 0


def test_a_wait_ends_with_the_job_as_it_stands_within_the_deadline(
    stack: Stack, stub: distance_pb2_grpc.DistanceServiceStub
) -> None:
    compute = stack.supervisor.services["compute"]
    compute.stop()  # nothing takes the job: it stays queued
    try:
        job_id = _submit(stub, "2024-03-19")
        begun = time.monotonic()
        waited = stub.GetJobStatus(
            pb.GetJobStatusRequest(job_id=job_id, wait_seconds=0.5), timeout=10
        )
        ran_out = time.monotonic() - begun
        # A wait longer than the call's deadline is cut to it: an answer, not DEADLINE_EXCEEDED.
        cut = stub.GetJobStatus(pb.GetJobStatusRequest(job_id=job_id, wait_seconds=60), timeout=2)
        http = urllib3.request("GET", f"{stack.url('status')}/jobs/{job_id}?wait=0.3")
    finally:
        stack.supervisor.restart("compute")
    assert waited.status == "queued"
    assert ran_out >= 0.5
    assert cut.status == "queued"
    assert http.status == 200
    assert http.json()["status"] == "queued"
    stack.wait_finished(job_id)


@pytest.mark.parametrize("wait", [-1.0, float("nan"), float("inf")])
def test_a_wait_that_is_not_seconds_is_invalid_argument(
    stub: distance_pb2_grpc.DistanceServiceStub, wait: float
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.GetJobStatus(
            pb.GetJobStatusRequest(job_id=str(uuid.uuid4()), wait_seconds=wait), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith("wait_seconds:")


@pytest.mark.parametrize(
    ("wait", "message"),
    [
        ("soon", "wait: 'soon' is not a number of seconds"),
        ("1e3", "wait: '1e3' is not a number of seconds"),
        ("nan", "wait: 'nan' is not a number of seconds"),
        ("-2", "wait: must not be negative"),
    ],
)
def test_http_waits_name_a_bad_value(stack: Stack, wait: str, message: str) -> None:
    response = urllib3.request("GET", f"{stack.url('status')}/jobs/{uuid.uuid4()}?wait={wait}")
    assert response.status == 400
    assert response.json()["error"].startswith(message)
