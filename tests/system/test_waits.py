"""Waiting for the outcome instead of polling for it: gRPC's `wait_seconds` and HTTP's
`?wait=` against the whole stack, status hearing of finishes on its direct connection."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
import urllib3

from shared import config
from shared.grpc_adapter import DistanceService, Upstream
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


def test_waits_are_capped_and_plain_reads_still_answer(
    stack: Stack, stub: distance_pb2_grpc.DistanceServiceStub
) -> None:
    # What status allows here: MAX_STATUS_WAITS, at most half of its threads (4 per CPU).
    slots = config.WaitSettings(max_status_waits=8, threads=None).wait_slots
    compute = stack.supervisor.services["compute"]
    compute.stop()  # the job stays queued: every wait runs to its end
    try:
        job_id = _submit(stub, "2024-03-20")
        asked = pb.GetJobStatusRequest(job_id=job_id, wait_seconds=4)
        waits = [stub.GetJobStatus.future(asked, timeout=20) for _ in range(slots)]
        time.sleep(1.0)  # all of them are waiting at status
        status_url = f"{stack.url('status')}/jobs/{job_id}"
        http_wait = urllib3.request("GET", f"{status_url}?wait=2", retries=False, timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetJobStatus(asked, timeout=10)
        plain = stub.GetJobStatus(pb.GetJobStatusRequest(job_id=job_id), timeout=10)
        plain_http = urllib3.request("GET", status_url, retries=False, timeout=10)
        answers = [future.result() for future in waits]
    finally:
        stack.supervisor.restart("compute")
    assert http_wait.status == 429
    assert http_wait.headers["Retry-After"] == "1"
    assert "MAX_STATUS_WAITS" in http_wait.json()["error"]
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry in 1 s" in (refused.value.details() or "")
    assert ("retry-after", "1") in [tuple(m) for m in refused.value.trailing_metadata() or ()]
    assert plain.status == "queued"
    assert plain_http.status == 200
    assert [answer.status for answer in answers] == ["queued"] * slots
    stack.wait_finished(job_id)


def test_the_ingress_caps_its_own_waits(stack: Stack) -> None:
    compute = stack.supervisor.services["compute"]
    upstream = Upstream(
        config.UpstreamSettings(submit_url=stack.url("submit"), status_url=stack.url("status"))
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    distance_pb2_grpc.add_DistanceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        DistanceService(upstream, max_waits=1), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    compute.stop()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            own = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]
            job_id = _submit(own, "2024-03-21")
            asked = pb.GetJobStatusRequest(job_id=job_id, wait_seconds=3)
            first = own.GetJobStatus.future(asked, timeout=20)
            time.sleep(0.5)
            with pytest.raises(grpc.RpcError) as refused:
                own.GetJobStatus(asked, timeout=10)
            plain = own.GetJobStatus(pb.GetJobStatusRequest(job_id=job_id), timeout=10)
            waited = first.result()
            # The slot is given back: the next wait is served.
            again = own.GetJobStatus(
                pb.GetJobStatusRequest(job_id=job_id, wait_seconds=0.2), timeout=10
            )
    finally:
        server.stop(grace=None)
        stack.supervisor.restart("compute")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (refused.value.details() or "").startswith(
        "wait_seconds: 1 calls are already waiting at this ingress"
    )
    assert [plain.status, waited.status, again.status] == ["queued"] * 3
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
