"""OpenTelemetry end to end: one job through the real processes yields one trace across the
ingress, submit and compute, received over OTLP/HTTP; logs carry its ids; nothing is
exported when no endpoint is set."""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from shared import config, telemetry
from shared.dev.stack import wait_until
from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc
from tests.conftest import Database, RecordingServer, S3Server
from tests.stack import Stack, start_stack


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, object]


class Captured(io.TextIOBase):
    """The stack's merged log, kept for assertions."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.lines.extend(text.splitlines())
        return len(text)


def _spans(receiver: RecordingServer) -> list[Span]:
    spans = []
    for request in list(receiver.received):
        if request["path"] != "/v1/traces":
            continue
        export = ExportTraceServiceRequest.FromString(request["body"])
        for resource_spans in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                spans.extend(
                    Span(
                        attributes.get("service.name", ""),
                        span.name,
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.parent_span_id.hex(),
                        {
                            a.key: getattr(a.value, a.value.WhichOneof("value") or "string_value")
                            for a in span.attributes
                        },
                    )
                    for span in scope.spans
                )
    return spans


def _metric_names(receiver: RecordingServer) -> set[str]:
    names = set()
    for request in list(receiver.received):
        if request["path"] == "/v1/metrics":
            export = ExportMetricsServiceRequest.FromString(request["body"])
            for resource in export.resource_metrics:
                for scope in resource.scope_metrics:
                    names.update(metric.name for metric in scope.metrics)
    return names


@pytest.fixture(scope="module")
def traced(seeded: Database, s3: S3Server) -> Iterator[tuple[Stack, RecordingServer, Captured]]:
    receiver = RecordingServer(
        default=(200, {"content-type": "application/x-protobuf"}, b"")
    ).start()
    log = Captured()
    stack = start_stack(
        seeded,
        s3,
        out=log,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_METRIC_EXPORT_INTERVAL="500",
        LOG_LEVEL="INFO",
    )
    yield stack, receiver, log
    stack.supervisor.stop()
    receiver.stop()


def test_one_job_is_one_trace_across_ingress_submit_and_compute(
    traced: tuple[Stack, RecordingServer, Captured],
) -> None:
    stack, receiver, log = traced
    with grpc.insecure_channel(stack.url("ingress")) as channel:
        stub = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.CalculateDistanceFromHome(
            pb.CalculateDistanceRequest(date="2024-03-12", device_id="phone1"), timeout=30
        )
    job = stack.wait_finished(reply.job_id)
    assert job.status == "completed"

    expected = {"submit distance.requested", "compute job", "claim", "read", "engine", "uploads"}

    def exported() -> bool:
        # Spans come in batches, each when it ends: "compute job" ends last, after "uploads".
        return expected <= {s.name for s in _spans(receiver)}

    wait_until(exported, 30, "the functions' spans")
    spans = _spans(receiver)
    (root,) = [s for s in spans if s.name.endswith("/CalculateDistanceFromHome")]
    assert root.service == "otel-worker-ingress"
    trace = [s for s in spans if s.trace_id == root.trace_id]
    services = {s.service for s in trace}
    assert services >= {"otel-worker-ingress", "otel-worker-submit", "otel-worker-compute"}
    assert expected <= {s.name for s in trace}
    # Each step of the job says what it worked on.
    named = {s.name: s.attributes for s in trace}
    assert named["read"]["job.id"] == reply.job_id
    assert job.result is not None
    # (the fixes analysed include the context read on each side of the day)
    assert named["engine"]["fixes"] > job.result["points"]["read"] > 0
    key = str(named["uploads"]["key"])
    assert key.startswith(f"jobs/{reply.job_id}/attempt-1/distance_20240312")
    # psycopg is instrumented: the statements are child spans of each function's span.
    for service, parent_name in (
        ("otel-worker-submit", "submit distance.requested"),
        ("otel-worker-compute", "compute job"),
    ):
        # (A duplicate delivery is a second, childless "compute job" span: allowed.)
        parents = [s for s in trace if s.service == service and s.name == parent_name]
        children = [s for s in trace if s.parent_id in {p.span_id for p in parents}]
        assert len(children) >= 2, service
    # Health checks are not traced.
    assert not [s for s in spans if "grpc.health" in s.name]
    # The trace was carried by the job row and the job.queued event.
    with stack.db() as conn:
        row = conn.execute(
            "SELECT traceparent FROM otel_worker.jobs WHERE id = %s", (uuid.UUID(reply.job_id),)
        ).fetchone()
    assert row is not None
    assert str(row[0]).split("-")[1] == root.trace_id

    lines = [
        json.loads(line.split("|", 1)[1])
        for line in log.lines
        if "|" in line and line.split("|", 1)[1].strip().startswith("{")
    ]
    compute_lines = [
        line for line in lines if line.get("job_id") == reply.job_id and line.get("trace_id")
    ]
    assert compute_lines, "no log line with the job id and a trace id"
    assert {line["trace_id"] for line in compute_lines} == {root.trace_id}
    assert all(len(line["span_id"]) == 16 for line in compute_lines)

    wait_until(lambda: "otel_worker.jobs" in _metric_names(receiver), 30, "job metrics")
    assert {"otel_worker.points", "otel_worker.db.read.duration"} <= _metric_names(receiver)


def test_without_an_endpoint_nothing_is_exported() -> None:
    settings = config.TelemetrySettings()
    telemetry._state.pid = None
    try:
        telemetry.setup("probe", settings)
        provider = telemetry.tracer_provider()
        assert provider._active_span_processor._span_processors == ()  # type: ignore[attr-defined]
        assert telemetry._state.meter_provider is not None
        assert not telemetry._state.meter_provider._all_metric_readers  # type: ignore[attr-defined]
        with telemetry.span("probe") as span:
            assert span.get_span_context().is_valid
            assert telemetry.traceparent() is not None
    finally:
        telemetry.shutdown()
        telemetry._state.pid = None
