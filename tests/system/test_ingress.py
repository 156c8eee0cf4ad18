"""The gRPC ingress as a real process, in front of scripted HTTP peers standing in for
submit and status: request mapping, every error code, deadlines, auth, health, reflection.
(The end-to-end tests run it against the real functions.)"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from shared import events
from shared.contracts import JobAccepted, JobPage, JobView
from shared.dev.stack import ServiceProcess, free_ports, grpc_serving, ingress_process, wait_until
from shared.grpc_adapter import SERVICE
from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc
from tests.conftest import RecordingServer, make_certificate

JOB_ID = uuid.UUID("0b9f3a52-5d3c-4c1e-8f0a-2b6d7e9c1a44")
QUEUED = dt.datetime(2026, 3, 8, 12, 0, tzinfo=dt.UTC)


def _view(**changes: object) -> JobView:
    base: dict[str, object] = {
        "job_id": JOB_ID,
        "status": "queued",
        "date": dt.date(2026, 3, 7),
        "end_date": dt.date(2026, 3, 7),
        "device_id": "phone",
        "timezone": "America/New_York",
        "queued_at": QUEUED,
        "max_attempts": 3,
        "idempotency_key": "k",
    }
    return JobView.model_validate({**base, **changes})


def _accepted(created: bool = True) -> tuple[int, dict[str, str], bytes]:
    event = events.new_event(
        events.JOB_ACCEPTED, JobAccepted(created=created, job=_view()), source="/submit"
    )
    headers, body = events.binary(event)
    return 200, headers, body


def _json(status: int, body: object) -> tuple[int, dict[str, str], bytes]:
    return status, {"content-type": "application/json"}, json.dumps(body).encode()


@dataclass
class Ingress:
    target: str
    submit: RecordingServer
    status: RecordingServer
    process: ServiceProcess

    def stub(self, channel: grpc.Channel) -> distance_pb2_grpc.DistanceServiceStub:
        return distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]


def _start(extra: dict[str, str] | None = None, ca: bytes | None = None) -> Ingress:
    submit, status = RecordingServer().start(), RecordingServer().start()
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "SUBMIT_URL": submit.url,
        "STATUS_URL": status.url,
        "UPSTREAM_TIMEOUT_SECONDS": "5",
        "GRPC_ALLOW_UNAUTHENTICATED": "true",
        **(extra or {}),
    }
    process = ingress_process(port, env).start()
    target = f"127.0.0.1:{port}"
    wait_until(lambda: grpc_serving(target, ca=ca), 30, "ingress", ignore=(grpc.RpcError,))
    return Ingress(target, submit, status, process)


def _stop(ingress: Ingress) -> None:
    ingress.process.stop()
    ingress.submit.stop()
    ingress.status.stop()


@pytest.fixture(scope="module")
def ingress() -> Iterator[Ingress]:
    started = _start()
    yield started
    _stop(started)


@pytest.fixture
def channel(ingress: Ingress) -> Iterator[grpc.Channel]:
    ingress.submit.received.clear()
    ingress.status.received.clear()
    ingress.submit.delay = ingress.status.delay = 0
    with grpc.insecure_channel(ingress.target) as channel:
        yield channel


def test_calculate_posts_a_binary_cloudevent_and_returns_the_job(
    ingress: Ingress, channel: grpc.Channel
) -> None:
    ingress.submit.script = [_accepted(created=False)]
    reply = ingress.stub(channel).CalculateDistanceFromHome(
        pb.CalculateDistanceRequest(date="2026-03-07", device_id="phone", idempotency_key="k"),
        timeout=10,
    )
    assert reply.job_id == str(JOB_ID)
    assert reply.status == "queued"
    assert reply.queued_at.ToDatetime(dt.UTC) == QUEUED
    assert reply.created is False
    (request,) = ingress.submit.received
    assert request["headers"]["ce-type"] == events.DISTANCE_REQUESTED
    assert request["headers"]["ce-source"] == "/otel-worker/ingress"
    assert json.loads(request["body"]) == {
        "date": "2026-03-07",
        "device_id": "phone",
        "idempotency_key": "k",
    }


@pytest.mark.parametrize(
    ("reply", "code", "message"),
    [
        (
            _json(400, {"error": "date: 2026-02-30 is not a calendar date"}),
            "INVALID_ARGUMENT",
            "date: 2026-02-30",
        ),
        (
            _json(409, {"error": "idempotency_key: used for another request"}),
            "ALREADY_EXISTS",
            "idempotency_key",
        ),
        (_json(503, {"error": "database unavailable"}), "UNAVAILABLE", "database unavailable"),
        (_json(500, {"error": "internal error"}), "INTERNAL", "internal error"),
        ((200, {"content-type": "application/json"}, b"{}"), "INTERNAL", "submit replied badly"),
    ],
)
def test_submit_errors_become_grpc_codes(
    ingress: Ingress,
    channel: grpc.Channel,
    reply: tuple[int, dict[str, str], bytes],
    code: str,
    message: str,
) -> None:
    ingress.submit.script = [reply]
    with pytest.raises(grpc.RpcError) as info:
        ingress.stub(channel).CalculateDistanceFromHome(
            pb.CalculateDistanceRequest(date="2026-02-30"), timeout=10
        )
    assert info.value.code().name == code
    assert message in (info.value.details() or "")


def test_get_job_status_maps_a_completed_job(ingress: Ingress, channel: grpc.Channel) -> None:
    summary = {
        "points": {"read": 3012, "used": 2950, "dropped": {"jitter": 40, "accuracy": 22}},
        "path_km": 41.5,
        "raw_path_km": 57.0,
        "max_distance_km": 12.25,
        "min_distance_km": 0.01,
        "trips": [],
        "devices": {},
        "notes": [],
    }
    completed = _view(
        status="completed",
        started_at=QUEUED,
        completed_at=QUEUED + dt.timedelta(seconds=1),
        attempts=1,
        result=summary,
        csv_key=f"jobs/{JOB_ID}/attempt-1/distance_20260307_phone_0b9f3a52.csv",
        processing_time_ms=830,
        csv={"url": "http://files.example/x.csv?X-Amz-Signature=a", "expires_at": QUEUED},
    )
    ingress.status.script = [_json(200, completed.model_dump(mode="json"))]
    reply = ingress.stub(channel).GetJobStatus(
        pb.GetJobStatusRequest(job_id=str(JOB_ID)), timeout=10
    )
    assert ingress.status.received[0]["path"] == f"/jobs/{JOB_ID}"
    assert reply.status == "completed"
    assert reply.attempts == 1
    result = reply.result
    assert result.csv_path.rsplit("/", 1)[1] == "distance_20260307_phone_0b9f3a52.csv"
    assert result.total_distance_km == 41.5
    assert result.total_locations == 3012
    assert result.max_distance_km == 12.25
    assert result.date == "2026-03-07"
    assert result.processing_time_ms == 830
    assert result.csv_url.startswith("http://files.example/")
    assert dict(result.metrics.points_dropped) == {"jitter": 40, "accuracy": 22}
    assert result.metrics.raw_path_km == 57.0


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (_json(404, {"error": "job 0b9f3a52-... not found"}), "NOT_FOUND"),
        (_json(400, {"error": "job_id: must be a UUID"}), "INVALID_ARGUMENT"),
        (_json(503, {"error": "database unavailable"}), "UNAVAILABLE"),
    ],
)
def test_status_errors_become_grpc_codes(
    ingress: Ingress, channel: grpc.Channel, reply: tuple[int, dict[str, str], bytes], code: str
) -> None:
    ingress.status.script = [reply]
    with pytest.raises(grpc.RpcError) as info:
        ingress.stub(channel).GetJobStatus(pb.GetJobStatusRequest(job_id=str(JOB_ID)), timeout=10)
    assert info.value.code().name == code


@pytest.mark.parametrize(
    ("job_id", "message"),
    [
        ("", "job_id: is required"),
        ("x", "job_id: 'x' is not a UUID"),
        (f"{JOB_ID}/report", "is not a UUID"),  # another route of status
        ("../jobs", "is not a UUID"),
        (f"{JOB_ID}\n", "is not a UUID"),
        (f"{{{JOB_ID}}}", "is not a UUID"),
        (str(JOB_ID)[:-1], "is not a UUID"),
        ("9" * 5000, "is not a UUID"),
    ],
)
def test_a_job_id_that_is_not_a_uuid_is_invalid_without_asking_status(
    ingress: Ingress, channel: grpc.Channel, job_id: str, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        ingress.stub(channel).GetJobStatus(pb.GetJobStatusRequest(job_id=job_id), timeout=10)
    details = info.value.details() or ""
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("job_id: ")
    assert message in details
    assert len(details) < 300
    assert ingress.status.received == []


PAGE = b"<!doctype html><html><body>" + b"<p>a row</p>" * 2000 + b"</body></html>"


@pytest.mark.parametrize(
    ("service", "reply", "code", "start"),
    [
        ("status", (200, {"content-type": "text/html"}, PAGE), "INTERNAL", "status replied badly"),
        ("status", (404, {"content-type": "text/html"}, PAGE), "NOT_FOUND", "status answered HTTP"),
        ("status", _json(503, {"error": "db down " * 1000}), "UNAVAILABLE", "db down db down"),
        ("submit", (200, {"content-type": "text/html"}, PAGE), "INTERNAL", "submit replied badly"),
        ("submit", (502, {"content-type": "text/html"}, PAGE), "UNAVAILABLE", "submit answered"),
    ],
)
def test_an_upstream_page_is_never_quoted(
    ingress: Ingress,
    channel: grpc.Channel,
    service: str,
    reply: tuple[int, dict[str, str], bytes],
    code: str,
    start: str,
) -> None:
    stub = ingress.stub(channel)
    if service == "submit":
        ingress.submit.script = [reply]
        request = pb.CalculateDistanceRequest(date="2026-03-07")
        call = lambda: stub.CalculateDistanceFromHome(request, timeout=10)  # noqa: E731
    else:
        ingress.status.script = [reply]
        call = lambda: stub.GetJobStatus(  # noqa: E731
            pb.GetJobStatusRequest(job_id=str(JOB_ID)), timeout=10
        )
    with pytest.raises(grpc.RpcError) as info:
        call()
    details = info.value.details() or ""
    assert info.value.code().name == code
    assert details.startswith(start), details
    assert "<" not in details  # no markup from the page
    assert len(details) < 300


def test_list_jobs_passes_every_filter_and_returns_the_page(
    ingress: Ingress, channel: grpc.Channel
) -> None:
    page = JobPage(jobs=[_view()], total_count=7, limit=50, offset=5)
    ingress.status.script = [_json(200, page.model_dump(mode="json"))]
    reply = ingress.stub(channel).ListJobs(
        pb.ListJobsRequest(
            status="queued", limit=0, offset=5, date="2026-03-07", device_id="phone"
        ),
        timeout=10,
    )
    path = ingress.status.received[0]["path"]
    assert path.startswith("/jobs?")
    for part in ("limit=0", "offset=5", "status=queued", "date=2026-03-07", "device_id=phone"):
        assert part in path
    assert (reply.total_count, reply.limit, reply.offset) == (7, 50, 5)
    assert [j.job_id for j in reply.jobs] == [str(JOB_ID)]


def test_the_callers_deadline_bounds_the_http_call(ingress: Ingress, channel: grpc.Channel) -> None:
    ingress.status.delay = 3
    with pytest.raises(grpc.RpcError) as info:
        ingress.stub(channel).GetJobStatus(pb.GetJobStatusRequest(job_id=str(JOB_ID)), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_without_a_deadline_the_server_limit_bounds_a_slow_upstream() -> None:
    started = _start({"UPSTREAM_TIMEOUT_SECONDS": "0.3"})
    try:
        started.status.default = _json(200, _view().model_dump(mode="json"))
        started.status.delay = 1
        with grpc.insecure_channel(started.target) as channel:
            stub = started.stub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.GetJobStatus(pb.GetJobStatusRequest(job_id=str(JOB_ID)))
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "did not answer" in (info.value.details() or "")
            # A caller who gives a deadline is served within it, past the server's default.
            reply = stub.GetJobStatus(pb.GetJobStatusRequest(job_id=str(JOB_ID)), timeout=10)
            assert reply.job_id == str(JOB_ID)
    finally:
        _stop(started)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Watch:
    """A health Watch of DistanceService, read by a thread: each status as it arrives, then
    "ended" (status OK) or the error code's name."""

    def __init__(self, channel: grpc.Channel) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        self.call = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=60)
        self.seen: queue.Queue[int | str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for reply in self.call:
                self.seen.put(reply.status)
            self.seen.put("ended")
        except grpc.RpcError as exc:
            self.seen.put(exc.code().name)

    def next(self, within: float) -> int | str:
        return self.seen.get(timeout=within)

    def expect(self, status: int, within: float) -> None:
        """Read until `status` comes (others may come first); fail after `within` s."""
        deadline = time.monotonic() + within
        seen: list[int | str] = []
        while not seen or seen[-1] != status:
            try:
                seen.append(self.next(max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"no {status} within {within} s; saw {seen}")


def test_a_check_answers_at_once_while_a_slow_function_is_probed() -> None:
    started = _start()
    started.submit.default = started.status.default = (200, {}, b"ok")
    started.submit.delay = 3  # longer than the probe waits: a service waking from zero
    try:
        with grpc.insecure_channel(started.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=SERVICE)
            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(lambda _: health.Check(request, timeout=1), range(2)))
            assert [answer.status for answer in answers] == [SERVING, SERVING]
            # The probe those checks started gave up on submit, then asked status: a
            # function slower than the probe is not reported down.
            wait_until(lambda: bool(started.status.received), 10, "the probe of status")
            time.sleep(0.5)
            assert health.Check(request, timeout=1).status == SERVING
    finally:
        started.submit.delay = 0
        _stop(started)


@contextlib.contextmanager
def _watched() -> Iterator[tuple[Ingress, grpc.Channel, _Watch]]:
    """An ingress whose functions answer 200, a channel to it and a Watch of
    DistanceService that has seen SERVING; all stopped afterwards."""
    started = _start()
    started.submit.default = started.status.default = (200, {}, b"ok")
    try:
        with grpc.insecure_channel(started.target) as channel:
            watch = _Watch(channel)
            assert watch.next(10) == SERVING
            yield started, channel, watch
            watch.call.cancel()
    finally:
        _stop(started)


def test_watchers_follow_the_functions_down_and_back() -> None:
    with _watched() as (started, channel, watch):
        wait_until(lambda: bool(started.status.received), 10, "the first probe")
        # A refused call tells watchers (nothing else probes here: no Check runs).
        started.submit.stop()
        with pytest.raises(grpc.RpcError) as info:
            started.stub(channel).CalculateDistanceFromHome(
                pb.CalculateDistanceRequest(date="2026-03-07"), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        watch.expect(NOT_SERVING, within=10)
        # With no calls, Checks (a probe's, an operator's) refresh a stale state in
        # the background, and watchers see functions come back and go down.
        health = health_pb2_grpc.HealthStub(channel)
        checking = threading.Event()

        def check() -> None:
            while not checking.wait(0.5):
                health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)

        checker = threading.Thread(target=check, daemon=True)
        checker.start()
        started.submit.start()
        watch.expect(SERVING, within=15)
        started.status.stop()
        watch.expect(NOT_SERVING, within=15)
        started.status.start()
        watch.expect(SERVING, within=15)
        checking.set()
        checker.join()


def test_an_open_watch_alone_lets_the_functions_sleep() -> None:
    # Knative scales an idle function to zero; a probe every few seconds would keep it up.
    with _watched() as (started, _, _):
        time.sleep(1)  # the probe the new Watch asked for, if any, is over
        before = len(started.submit.received) + len(started.status.received)
        time.sleep(7)  # longer than the 5 s after which a state counts as stale
        assert len(started.submit.received) + len(started.status.received) == before


def test_a_function_answering_its_own_503_is_reachable() -> None:
    # status with its database down answers 503 JSON, while its /healthz says 200: the call
    # fails UNAVAILABLE, and health does not flap between what calls and probes see.
    with _watched() as (started, channel, watch):
        started.status.routes[f"/jobs/{JOB_ID}"] = _json(
            503, {"error": "database unavailable", "status": 503}
        )
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as info:
                started.stub(channel).GetJobStatus(
                    pb.GetJobStatusRequest(job_id=str(JOB_ID)), timeout=10
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "database unavailable" in str(info.value.details())
        with pytest.raises(queue.Empty):
            watch.next(2)  # no change was reported


def test_unreachable_functions_are_unavailable_and_unhealthy() -> None:
    started = _start()
    started.submit.stop()
    started.status.stop()
    try:
        with grpc.insecure_channel(started.target) as channel:
            # A watcher learns it from the probe its Watch started.
            watch = _Watch(channel)
            watch.expect(NOT_SERVING, within=10)
            watch.call.cancel()
            health = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                started.stub(channel).CalculateDistanceFromHome(
                    pb.CalculateDistanceRequest(date="2026-03-07"), timeout=10
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert (
                health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10).status
                == NOT_SERVING
            )
            # The process itself still serves: Knative must not restart it for this.
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
    finally:
        _stop(started)


def test_shutdown_ends_watches_at_once_and_drains_calls() -> None:
    started = _start()
    started.submit.default = (200, {}, b"ok")
    started.status.default = _json(200, _view().model_dump(mode="json"))
    started.status.delay = 2
    path = f"/jobs/{JOB_ID}"
    try:
        with grpc.insecure_channel(started.target) as channel, ThreadPoolExecutor(1) as pool:
            watch = _Watch(channel)
            assert watch.next(10) == SERVING
            request = pb.GetJobStatusRequest(job_id=str(JOB_ID))
            call = pool.submit(started.stub(channel).GetJobStatus, request, timeout=15)
            wait_until(
                lambda: any(r["path"] == path for r in started.status.received), 10, "the call"
            )
            signalled = time.monotonic()
            started.process.signal(signal.SIGTERM)
            watch.expect(NOT_SERVING, within=5)
            assert watch.next(5) == "ended"
            assert call.result().job_id == str(JOB_ID)  # the call in flight still finished
            assert started.process.process is not None
            assert started.process.process.wait(timeout=30) == 0
            assert time.monotonic() - signalled < 8  # the drain's grace is 20 s
    finally:
        _stop(started)


def test_oversized_requests_are_refused(ingress: Ingress, channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        ingress.stub(channel).CalculateDistanceFromHome(
            pb.CalculateDistanceRequest(date="2026-03-07", device_id="x" * 200_000), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ingress.submit.received == []


def test_reflection_lists_the_services(ingress: Ingress, channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[no-untyped-call]
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_an_ingress_without_a_token_refuses_to_start_naming_it() -> None:
    # A Secret that lost its key (or holds only a newline) must not open the service to all.
    (port,) = free_ports(1)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GRPC_")},
        "GRPC_AUTH_TOKEN": "\n",
        "SUBMIT_URL": "http://127.0.0.1:9",
        "STATUS_URL": "http://127.0.0.1:9",
    }
    process = ingress_process(port, env).start(stdout=subprocess.PIPE)
    try:
        assert process.process is not None
        output, _ = process.process.communicate(timeout=30)
        assert process.process.returncode == 2
        assert b"ingress: invalid configuration: GRPC_AUTH_TOKEN: is required" in output
        assert b"GRPC_ALLOW_UNAUTHENTICATED=true" in output
        assert b"Traceback" not in output
    finally:
        process.stop()


@pytest.mark.parametrize(("token", "warned"), [("\n", True), ("s3cret", False)])
def test_an_ingress_without_a_token_says_so_at_start(token: str, warned: bool) -> None:
    # Allowed by name, an open ingress is said, not silent.
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "GRPC_AUTH_TOKEN": token,
        "GRPC_ALLOW_UNAUTHENTICATED": "true",
        "LOG_LEVEL": "INFO",
        "SUBMIT_URL": "http://127.0.0.1:9",
        "STATUS_URL": "http://127.0.0.1:9",
    }
    process = ingress_process(port, env).start(stdout=subprocess.PIPE)
    try:
        assert process.process is not None
        assert process.process.stdout is not None
        lines = []
        for raw in process.process.stdout:
            lines.append(raw.decode())
            if "ingress serving" in lines[-1]:
                break
        process.signal(signal.SIGTERM)
        rest, _ = process.process.communicate(timeout=30)
        said = "".join(lines) + rest.decode()
        assert ("GRPC_AUTH_TOKEN is not set: every caller is accepted" in said) == warned
    finally:
        process.stop()


def test_bearer_token_is_required_when_configured() -> None:
    # As a Secret made from a file holds it: the newline is not part of the token.
    started = _start({"GRPC_AUTH_TOKEN": "s3cret-token\n"})
    started.status.default = _json(200, _view().model_dump(mode="json"))
    try:
        with grpc.insecure_channel(started.target) as channel:
            stub = started.stub(channel)
            request = pb.GetJobStatusRequest(job_id=str(JOB_ID))
            for metadata in [
                (),
                (("authorization", "Bearer wrong"),),
                (("authorization", "s3cret-token"),),
                (("authorization", "Basic s3cret-token"),),
                (("authorization", "Bearers3cret-token"),),
                (("authorization", "Bearer s3cret-token-and-more"),),
            ]:
                with pytest.raises(grpc.RpcError) as info:
                    stub.GetJobStatus(request, timeout=10, metadata=metadata)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert started.status.received == []
            # The scheme is case-insensitive (RFC 7235), the token is not.
            for scheme in ("Bearer", "bearer", "BEARER"):
                reply = stub.GetJobStatus(
                    request, timeout=10, metadata=(("authorization", f"{scheme} s3cret-token"),)
                )
                assert reply.job_id == str(JOB_ID)
            with pytest.raises(grpc.RpcError) as info:
                stub.GetJobStatus(
                    request, timeout=10, metadata=(("authorization", "Bearer S3CRET-TOKEN"),)
                )
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert grpc_serving(started.target)  # health needs no token: probes cannot send one
    finally:
        _stop(started)


def test_a_second_ingress_on_the_same_port_fails_to_start(ingress: Ingress) -> None:
    port = int(ingress.target.rsplit(":", 1)[1])
    env = {
        **os.environ,
        "SUBMIT_URL": ingress.submit.url,
        "STATUS_URL": ingress.status.url,
        "GRPC_ALLOW_UNAUTHENTICATED": "true",
    }
    second = ingress_process(port, env).start(stdout=subprocess.PIPE)
    assert second.process is not None
    assert second.process.stdout is not None
    with second.process.stdout as output:
        try:
            # Sharing the port (SO_REUSEPORT) it would serve on and never exit.
            code = second.process.wait(timeout=15)
        finally:
            second.stop()
        assert code == 1
        assert f"ingress: cannot listen on port {port}" in output.read().decode()
    assert grpc_serving(ingress.target)


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "otel-worker"), *argv],
        env={**os.environ, "GRPC_AUTH_TOKEN": "s3cret"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_ingress_serves_tls_and_the_cli_connects_with_its_ca(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    started = _start(
        {"GRPC_TLS_CERT": str(cert), "GRPC_TLS_KEY": str(key), "GRPC_AUTH_TOKEN": "s3cret"},
        ca=cert.read_bytes(),
    )
    started.status.default = _json(200, _view().model_dump(mode="json"))
    port = started.target.rsplit(":", 1)[1]
    try:
        # Plain h2c to a TLS port gets nowhere.
        with grpc.insecure_channel(started.target) as plain:
            with pytest.raises(grpc.RpcError) as info:
                started.stub(plain).GetJobStatus(
                    pb.GetJobStatusRequest(job_id=str(JOB_ID)), timeout=5
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        address = f"localhost:{port}"
        # TLS against the system's roots: this certificate is nobody's, so it is refused.
        untrusted = _cli("status", str(JOB_ID), "--ingress", address, "--tls")
        assert untrusted.returncode == 3
        assert "UNAVAILABLE" in untrusted.stderr
        trusted = _cli("status", str(JOB_ID), "--ingress", address, "--ca-file", str(cert))
        assert trusted.returncode == 0, trusted.stderr
        assert str(JOB_ID) in trusted.stdout
        assert len(started.status.received) == 1
        missing = tmp_path / "nope.pem"
        absent = _cli("status", str(JOB_ID), "--ingress", address, "--ca-file", str(missing))
        assert absent.returncode == 2
        assert f"--ca-file: no such file: {missing}" in absent.stderr
    finally:
        _stop(started)


def test_cancel_job_deletes_through_submit_and_maps_its_answers(
    ingress: Ingress, channel: grpc.Channel
) -> None:
    stub = ingress.stub(channel)
    cancelled = _view(status="cancelled", error_message="cancelled at the caller's request")
    ingress.submit.script = [
        _json(200, cancelled.model_dump(mode="json")),
        _json(409, {"error": f"job {JOB_ID} is already completed: only a queued or ..."}),
        _json(404, {"error": f"job {JOB_ID} not found"}),
    ]
    reply = stub.CancelJob(pb.CancelJobRequest(job_id=str(JOB_ID)), timeout=10)
    assert (reply.job_id, reply.status) == (str(JOB_ID), "cancelled")
    assert reply.error_message == "cancelled at the caller's request"
    (sent,) = ingress.submit.received
    assert (sent["method"], sent["path"]) == ("DELETE", f"/jobs/{JOB_ID}")
    for code in ("FAILED_PRECONDITION", "NOT_FOUND"):
        with pytest.raises(grpc.RpcError) as info:
            stub.CancelJob(pb.CancelJobRequest(job_id=str(JOB_ID)), timeout=10)
        assert info.value.code().name == code
    with pytest.raises(grpc.RpcError) as info:
        stub.CancelJob(pb.CancelJobRequest(job_id="../jobs"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(ingress.submit.received) == 3
