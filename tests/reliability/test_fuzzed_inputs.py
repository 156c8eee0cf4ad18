"""Fuzzed inputs (hypothesis) over HTTP and gRPC: ids, dates, time zones, device ids,
idempotency keys, limits and offsets, each anything at all. Never a 5xx or INTERNAL: a
refusal is a 4xx whose error names the field, or INVALID_ARGUMENT (NOT_FOUND for a well
formed id of no job)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from urllib.parse import quote, urlencode

import grpc
import pytest
import urllib3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc
from tests.reliability.conftest import Figures
from tests.stack import Stack

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FIELDS = ("date", "end_date", "device_id", "timezone", "idempotency_key")
# Text of every kind, and the near-misses of valid values that parsers trip on.
ANYTHING = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["2024-02-30", "2024-13-01", "0000-01-01", "9999-12-31", "24-03-01",
                     "2024-03-01T00:00", "Europe/Nowhere", "UTC", "America/New_York",
                     "../etc/passwd", "\x00", "phone1", " ", "-1", "1e9", "NaN"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)  # fmt: skip
TEXT = st.one_of(st.text(max_size=60), st.sampled_from(["", "0", "-1", "99999999999", "1e3"]))
ERRORS_NAME = (
    *FIELDS,
    "body",
    "request",
    "job_id",
    "limit",
    "offset",
    "status",
    "Idempotency",
    "resource",
)


@pytest.fixture
def stub(reliable_stack: Stack) -> Iterator[distance_pb2_grpc.DistanceServiceStub]:
    with grpc.insecure_channel(reliable_stack.url("ingress")) as channel:
        yield distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]


def _judge(answer: urllib3.BaseHTTPResponse, seen: Counter[int]) -> None:
    seen[answer.status] += 1
    assert answer.status < 500, answer.data
    if answer.status >= 400:
        assert answer.headers.get("content-type", "").startswith("application/json"), (
            answer.status,
            answer.data[:300],
        )
        error = json.loads(answer.data)["error"]
        assert any(name in error for name in ERRORS_NAME), error


def test_fuzzed_http_requests_are_answered_or_refused_by_name(
    reliable_stack: Stack, score: Figures
) -> None:
    stack = reliable_stack
    http = urllib3.PoolManager(retries=False, timeout=30)
    seen: Counter[int] = Counter()

    @EXAMPLES
    @given(body=st.dictionaries(st.sampled_from(FIELDS), ANYTHING, max_size=5), key=TEXT)
    def submit(body: dict[str, object], key: str) -> None:
        # A header carries what HTTP can: printable ASCII (anything else never reaches us).
        headers = {"Idempotency-Key": key} if key.isascii() and key.isprintable() else {}
        _judge(http.request("POST", stack.url("submit"), json=body, headers=headers), seen)

    @EXAMPLES
    @given(
        job_id=TEXT,
        query=st.dictionaries(
            st.sampled_from(["limit", "offset", "status", "date", "device_id"]), TEXT, max_size=5
        ),
    )
    def status(job_id: str, query: dict[str, str]) -> None:
        base = stack.url("status")
        _judge(http.request("GET", f"{base}/jobs/{quote(job_id, safe='')}"), seen)
        _judge(http.request("GET", f"{base}/jobs?{urlencode(query)}"), seen)
        cancel = f"{stack.url('submit')}/jobs/{quote(job_id, safe='')}"
        _judge(http.request("DELETE", cancel), seen)

    submit()
    status()
    score.note = "answers " + ", ".join(f"{code}: {n}" for code, n in sorted(seen.items()))


ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


def test_fuzzed_grpc_requests_are_answered_or_invalid_argument(
    stub: distance_pb2_grpc.DistanceServiceStub, score: Figures
) -> None:
    seen: Counter[str] = Counter()
    wrong: list[tuple[object, str]] = []

    def call(method: object, request: object) -> None:
        try:
            method(request, timeout=30)  # type: ignore[operator]
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            seen[code.name] += 1
            if code not in ALLOWED or not details:
                wrong.append((code, details))
        else:
            seen["OK"] += 1
        assert wrong == []

    @EXAMPLES
    @given(fields=st.fixed_dictionaries({}, optional=dict.fromkeys(FIELDS, TEXT)))
    def submit(fields: dict[str, str]) -> None:
        call(stub.CalculateDistanceFromHome, pb.CalculateDistanceRequest(**fields))

    @EXAMPLES
    @given(
        job_id=TEXT,
        limit=st.integers(-(2**31), 2**31 - 1),
        offset=st.integers(-(2**31), 2**31 - 1),
        status=TEXT,
        date=TEXT,
        device=TEXT,
    )
    def read(job_id: str, limit: int, offset: int, status: str, date: str, device: str) -> None:
        call(stub.GetJobStatus, pb.GetJobStatusRequest(job_id=job_id))
        call(stub.ListJobs, pb.ListJobsRequest(limit=limit, offset=offset, status=status,
                                                date=date, device_id=device))  # fmt: skip

    submit()
    read()
    score.note = "answers " + ", ".join(f"{code}: {n}" for code, n in sorted(seen.items()))
