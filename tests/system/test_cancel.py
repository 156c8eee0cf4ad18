"""Cancelling jobs on the real stack: a queued job never runs, a running one stops and leaves
no objects, a finished one cannot be cancelled, and gRPC and the command line agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import urllib3

from shared import events
from shared.contracts import JobAccepted, JobView
from shared.dev.stack import wait_until
from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc
from tests.stack import Stack


def _delete(stack: Stack, job_id: uuid.UUID | str) -> urllib3.BaseHTTPResponse:
    return urllib3.request("DELETE", f"{stack.url('submit')}/jobs/{job_id}", retries=False)


def _queued_job(stack: Stack) -> uuid.UUID:
    """A queued job marked announced an hour from now: nothing publishes or runs it."""
    with stack.db() as conn:
        row = conn.execute(
            "INSERT INTO otel_worker.jobs (date_from, date_to, device_id, timezone,"
            " idempotency_key, max_attempts, published_at) VALUES ('2024-03-12', '2024-03-12',"
            " 'phone1', 'America/New_York', %s, 3, now() + interval '1 hour') RETURNING id",
            (f"cancel-{uuid.uuid4()}",),
        ).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def _queued_delivery(job_id: uuid.UUID) -> tuple[dict[str, str], bytes]:
    event = events.new_event(
        events.JOB_QUEUED,
        events.contracts.JobQueued(job_id=job_id),
        source="/tests/cancel",
        subject=str(job_id),
        traceparent=None,
    )
    return events.binary(event)


def _wait_attempt_over(stack: Stack, job_id: uuid.UUID) -> None:
    """Until compute has answered the delivery of the job's job.queued."""
    broker = stack.supervisor.broker
    assert broker is not None

    def over() -> bool:
        return any(
            hop.event_type == events.JOB_QUEUED
            and hop.subject == str(job_id)
            and hop.outcome == "delivered"
            for hop in broker.hops
        )

    wait_until(over, 60, "the attempt to end")


def test_a_cancelled_queued_job_never_runs(stack: Stack) -> None:
    job_id = _queued_job(stack)
    reply = _delete(stack, job_id)
    assert reply.status == 200, reply.data
    job = JobView.model_validate_json(reply.data)
    assert (job.status, job.attempts) == ("cancelled", 0)
    assert job.error_message == "cancelled at the caller's request"
    assert job.completed_at is not None
    # Its job.queued arriving late (a redelivery) runs nothing: compute answers with the
    # outcome, the same event submit sent (same id).
    headers, body = _queued_delivery(job_id)
    late = urllib3.request("POST", stack.url("compute"), headers=headers, body=body)
    assert late.status == 200
    assert late.headers["ce-type"] == events.JOB_CANCELLED
    assert late.headers["ce-id"] == f"{job_id}.cancelled"
    after = stack.job(job_id)
    assert (after.status, after.attempts, after.started_at) == ("cancelled", 0, None)
    assert not [key for key in stack.objects() if str(job_id) in key]


def test_cancelling_twice_or_a_finished_or_unknown_job_is_refused(stack: Stack) -> None:
    job_id = _queued_job(stack)
    assert _delete(stack, job_id).status == 200
    again = _delete(stack, job_id)
    assert again.status == 409
    assert json.loads(again.data)["error"].startswith(f"job {job_id} is already cancelled")
    assert _delete(stack, uuid.uuid4()).status == 404
    bad = _delete(stack, "not-a-uuid")
    assert bad.status == 400
    assert json.loads(bad.data)["error"].startswith("job_id:")
    # status keeps its read-only identity.
    assert urllib3.request("DELETE", f"{stack.url('status')}/jobs/{job_id}").status == 405


def test_a_running_job_stops_and_leaves_no_objects(stack: Stack) -> None:
    # Every device for the whole seeded month: seconds of work, time to cancel it mid-way.
    reply = urllib3.request(
        "POST", stack.url("submit"), json={"date": "2024-03-01", "end_date": "2024-03-31"}
    )
    job_id = JobAccepted.model_validate_json(reply.data).job.job_id
    wait_until(lambda: stack.job(job_id).status == "processing", 30, "processing", interval=0.02)
    cancel = _delete(stack, job_id)
    assert cancel.status == 200, cancel.data
    assert JobView.model_validate_json(cancel.data).status == "cancelled"
    _wait_attempt_over(stack, job_id)
    job = stack.job(job_id)
    assert (job.status, job.csv_key, job.result) == ("cancelled", None, None)
    assert not [key for key in stack.objects() if str(job_id) in key]


def test_a_cancel_racing_the_completion_has_one_winner(stack: Stack) -> None:
    """Cancel the moment compute starts: whichever commits first wins, and the job, its
    objects and the answers agree."""
    outcomes = set()
    for day in ("2024-03-18", "2024-03-19", "2024-03-20", "2024-03-21"):
        reply = urllib3.request(
            "POST", stack.url("submit"), json={"date": day, "device_id": "phone2"}
        )
        job_id = JobAccepted.model_validate_json(reply.data).job.job_id
        wait_until(
            lambda job_id=job_id: stack.job(job_id).status != "queued",
            30,
            "a claim",
            interval=0.005,
        )
        cancel = _delete(stack, job_id)
        assert cancel.status in {200, 409}, cancel.data
        final = stack.wait_finished_or_cancelled(job_id)
        _wait_attempt_over(stack, job_id)
        objects = [key for key in stack.objects() if str(job_id) in key]
        if cancel.status == 200:
            assert final.status == "cancelled"
            assert (final.csv_key, objects) == (None, [])  # what it uploaded was removed
        else:
            assert final.status == "completed"
            assert final.csv_key in objects
            assert json.loads(cancel.data)["error"].startswith(f"job {job_id} is already")
        outcomes.add(final.status)
    assert outcomes <= {"cancelled", "completed"}


@pytest.fixture
def stub(stack: Stack) -> Iterator[distance_pb2_grpc.DistanceServiceStub]:
    with grpc.insecure_channel(stack.url("ingress")) as channel:
        yield distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]


def _otel_worker(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "otel-worker"), *argv],
        env={**os.environ, "INGRESS_ADDRESS": stack.url("ingress")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cancel_over_grpc_and_the_command_line(
    stack: Stack, stub: distance_pb2_grpc.DistanceServiceStub
) -> None:
    job_id = _queued_job(stack)
    reply = stub.CancelJob(pb.CancelJobRequest(job_id=str(job_id)), timeout=10)
    assert (reply.status, reply.error_message) == (
        "cancelled",
        "cancelled at the caller's request",
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.CancelJob(pb.CancelJobRequest(job_id=str(job_id)), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = stub.ListJobs(pb.ListJobsRequest(status="cancelled", limit=500), timeout=10)
    assert str(job_id) in {job.job_id for job in listed.jobs}

    other = _queued_job(stack)
    cancelled = _otel_worker(stack, "cancel", str(other))
    assert (cancelled.returncode, cancelled.stdout) == (0, f"job {other} cancelled\n")
    again = _otel_worker(stack, "cancel", str(other))
    assert again.returncode == 3
    assert again.stderr.startswith(f"otel-worker: FAILED_PRECONDITION: job {other} is already")
