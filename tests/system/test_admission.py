"""Admission: a cap on pending work in device-days and a rate per requester, through HTTP
and gRPC on a stack of its own (the shared one admits everything). The buckets alone are
unit-tested in tests/unit/test_admission.py."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import grpc
import pytest
import urllib3

from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc
from tests.conftest import Database, S3Server
from tests.stack import Stack, start_stack


@pytest.fixture(scope="module")
def admitting(seeded: Database, s3: S3Server) -> Iterator[Stack]:
    stack = start_stack(
        seeded, s3, REQUEST_BURST="3", REQUEST_RATE_PER_MINUTE="1", MAX_PENDING_JOBS="60"
    )
    yield stack
    stack.supervisor.stop()


def _post(stack: Stack, day: str, caller: str, key: str | None = None) -> urllib3.BaseHTTPResponse:
    headers = {"X-Forwarded-For": f"{caller}, 10.9.9.9"}
    if key:
        headers["Idempotency-Key"] = key
    return urllib3.request(
        "POST",
        stack.url("submit"),
        json={"date": day, "device_id": "phone1"},
        headers=headers,
        retries=False,
    )


def test_http_requesters_get_their_burst_then_429_with_a_retry_hint(admitting: Stack) -> None:
    answers = [_post(admitting, f"2024-03-0{day}", "192.0.2.1").status for day in (1, 2, 3)]
    assert answers == [202, 202, 202]
    refused = _post(admitting, "2024-03-04", "192.0.2.1")
    assert refused.status == 429
    assert int(refused.headers["Retry-After"]) > 0
    body = json.loads(refused.data)
    assert body["error"].startswith("too many requests from 192.0.2.1:")
    assert body["retry_after"] == int(refused.headers["Retry-After"])
    # Another caller is not held back by the first.
    assert _post(admitting, "2024-03-04", "192.0.2.2").status == 202


def _pending(stack: Stack, device_days: int) -> list[uuid.UUID]:
    """Queued jobs of `device_days` in all, announced an hour from now: nothing runs them."""
    ids = []
    with stack.db() as conn:
        while device_days > 0:
            days = min(device_days, 31)
            row = conn.execute(
                "INSERT INTO otel_worker.jobs (date_from, date_to, device_id, timezone,"
                " idempotency_key, max_attempts, published_at) VALUES ('2024-01-01',"
                " '2024-01-01'::date + %s, 'phone3', 'UTC', %s, 3, now() + interval '1 hour')"
                " RETURNING id",
                (days - 1, f"pending-{uuid.uuid4()}"),
            ).fetchone()
            assert row is not None
            ids.append(uuid.UUID(str(row[0])))
            device_days -= days
    return ids


def _clear(stack: Stack, ids: list[uuid.UUID]) -> None:
    for job_id in ids:
        urllib3.request("DELETE", f"{stack.url('submit')}/jobs/{job_id}")


@pytest.fixture
def channel(admitting: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(admitting.url("ingress")) as channel:
        yield channel


def test_pending_work_over_the_cap_is_refused_through_http_and_grpc(
    admitting: Stack, channel: grpc.Channel
) -> None:
    stub = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]
    accepted = stub.CalculateDistanceFromHome(
        pb.CalculateDistanceRequest(date="2024-03-10", device_id="phone2"), timeout=10
    )
    first = _post(admitting, "2024-03-11", "198.51.100.7", key="kept")
    assert first.status == 202
    held = _pending(admitting, 62)
    try:
        refused = _post(admitting, "2024-03-12", "198.51.100.8")
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "30"
        error = json.loads(refused.data)["error"]
        assert "above MAX_PENDING_JOBS (60)" in error, error
        # A repeat of a request already admitted adds no work: still answered.
        assert _post(admitting, "2024-03-11", "198.51.100.9", key="kept").status == 200
        with pytest.raises(grpc.RpcError) as info:
            stub.CalculateDistanceFromHome(
                pb.CalculateDistanceRequest(date="2024-03-13", device_id="phone2"), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "MAX_PENDING_JOBS (60)" in (info.value.details() or "")
        assert dict(info.value.trailing_metadata() or ())["retry-after"] == "30"  # type: ignore[attr-defined]
    finally:
        _clear(admitting, held)
    # The gRPC caller's own rate: its burst of 3 is spent (one accepted, one refused above,
    # this one), then RESOURCE_EXHAUSTED names the rate.
    stub.CalculateDistanceFromHome(
        pb.CalculateDistanceRequest(date="2024-03-14", device_id="phone2"), timeout=10
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.CalculateDistanceFromHome(
            pb.CalculateDistanceRequest(date="2024-03-15", device_id="phone2"), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (info.value.details() or "").startswith("too many requests from /otel-worker/ingress")
    assert int(dict(info.value.trailing_metadata() or ())["retry-after"]) > 0  # type: ignore[attr-defined]
    assert accepted.job_id
