"""SQL-injection payloads in every request field, over HTTP and gRPC: each is stored
literally (an idempotency key) or refused by name (dates, time zone, device id, job id),
and has no effect: the fixes and the jobs table are as they were."""

from __future__ import annotations

import time
from urllib.parse import quote, urlencode

import grpc
import urllib3

from shared.contracts import JobAccepted
from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc
from tests.reliability.conftest import Figures
from tests.stack import Stack

PAYLOADS = [
    "'; DROP TABLE otel_worker.jobs; --",
    "x' OR '1'='1",
    "1; DELETE FROM public.locations",
    "$$; DROP SCHEMA otel_worker CASCADE; $$",
    "phone1'--",
    "%' OR 1=1 --",
    '"; TRUNCATE public.locations; --',
    "'); SELECT pg_sleep(10); --",
    "\\'; UPDATE otel_worker.jobs SET status = 'failed'; --",
]


def _counts(stack: Stack) -> tuple[int, int]:
    with stack.db() as conn:
        fixes = conn.execute("SELECT count(*) FROM public.locations").fetchone()
        failed = conn.execute(
            "SELECT count(*) FROM otel_worker.jobs WHERE status = 'failed'"
        ).fetchone()
    assert fixes is not None
    assert failed is not None
    return int(fixes[0]), int(failed[0])


def test_injection_payloads_are_stored_literally_or_refused(
    reliable_stack: Stack, score: Figures
) -> None:
    stack = reliable_stack
    http = urllib3.PoolManager(retries=False, timeout=30)
    before = _counts(stack)
    started = time.monotonic()
    stored: dict[str, tuple[str, str]] = {}  # job id -> (key, device) as sent
    refused = 0
    refusals: list[tuple[object, bool]] = []
    for k, payload in enumerate(PAYLOADS):
        key = f"inject-{k}-{payload}"
        answer = http.request(
            "POST",
            stack.url("submit"),
            json={"date": "2024-03-09", "device_id": "phone1"},
            headers={"Idempotency-Key": key},
        )
        assert answer.status == 202, answer.data
        stored[str(JobAccepted.model_validate_json(answer.data).job.job_id)] = (key, "phone1")
        for field in ("date", "end_date", "timezone", "device_id"):
            answer = http.request(
                "POST", stack.url("submit"), json={"date": "2024-03-09", field: payload}
            )
            assert answer.status == 400, answer.data
            assert field in answer.json()["error"]
            refused += 1
        for query in ({"device_id": payload}, {"status": payload}, {"date": payload}):
            answer = http.request("GET", f"{stack.url('status')}/jobs?{urlencode(query)}")
            assert answer.status in {200, 400}, answer.data
            if answer.status == 200:
                assert answer.json()["jobs"] == []  # no job has that device
            else:
                refused += 1
        for method, base in (("GET", stack.url("status")), ("DELETE", stack.url("submit"))):
            answer = http.request(method, f"{base}/jobs/{quote(payload, safe='')}")
            assert answer.status in {400, 404}, answer.data
            refused += 1
    with grpc.insecure_channel(stack.url("ingress")) as channel:
        stub = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]
        for payload in PAYLOADS:
            reply = stub.CalculateDistanceFromHome(
                pb.CalculateDistanceRequest(date="2024-03-10", device_id="phone2",
                                            idempotency_key=f"inject-grpc-{payload}"),
                timeout=30,
            )  # fmt: skip
            stored[reply.job_id] = (f"inject-grpc-{payload}", "phone2")
            for field in ("device_id", "timezone", "end_date"):
                try:
                    stub.CalculateDistanceFromHome(
                        pb.CalculateDistanceRequest(date="2024-03-10", **{field: payload}),
                        timeout=30,
                    )
                except grpc.RpcError as exc:
                    refusals.append((exc.code(), field in (exc.details() or "")))
                else:
                    refusals.append(("accepted", False))
    for job_id in stored:
        assert stack.wait_finished(job_id).status == "completed"
    with stack.db() as conn:
        rows = {
            str(job_id): (key, device)
            for job_id, key, device in conn.execute(
                "SELECT id, idempotency_key, device_id FROM otel_worker.jobs"
                " WHERE idempotency_key LIKE 'inject-%%'"
            )
        }
    assert rows == stored  # literally what was sent
    assert set(refusals) == {(grpc.StatusCode.INVALID_ARGUMENT, True)}
    assert _counts(stack) == before  # nothing deleted, nothing failed by a payload
    score.jobs = len(stored)
    score.note = (
        f"{len(PAYLOADS)} payloads: {len(stored)} keys stored literally, "
        f"{refused + len(refusals)} refused, "
        f"{time.monotonic() - started:.0f} s"
    )
