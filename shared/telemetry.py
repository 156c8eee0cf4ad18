"""OpenTelemetry for every process: traces, metrics and trace ids in the logs.

`setup` runs once per serving process, on first use rather than at import, and again in
a forked child (the SDK's exporter threads do not survive a fork). With no
`OTEL_EXPORTER_OTLP_ENDPOINT` nothing is exported and no network call is made, but spans
still carry trace context, so a `traceparent` flows from the gRPC call through submit,
the broker hop and compute.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from shared.config import TelemetrySettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.sampling import Sampler


class _State:
    """This process's telemetry. Our own providers rather than the global ones: the globals
    may be set only once per process, which a forked child re-creating its exporters
    cannot honour."""

    lock = threading.Lock()
    pid: int | None = None
    prometheus = False
    exporting = False
    tracer_provider: trace.TracerProvider | None = None
    tracer: trace.Tracer | None = None
    meter_provider: metrics.MeterProvider | None = None
    instruments: Instruments | None = None
    queue_depth = 0
    oldest_queued_age = 0.0


_state = _State()
# W3C trace context, the one format our events and calls carry. Used directly: the global
# propagator looks its plugins up through package metadata, slow on every cold start.
_PROPAGATOR = TraceContextTextMapPropagator()


def _sampler(settings: TelemetrySettings) -> Sampler:
    from opentelemetry.sdk.trace import sampling

    ratio = sampling.TraceIdRatioBased(settings.otel_traces_sampler_arg)
    return {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": sampling.ParentBased(ratio),
    }[settings.otel_traces_sampler]


def setup(function: str, settings: TelemetrySettings, *, instrument_psycopg: bool = False) -> None:
    """Install the tracer and meter providers for this process (idempotent per process).

    `function` names the service in `faas.name`; psycopg instrumentation is opt-in for
    processes that talk to PostgreSQL.
    """
    with _state.lock:
        if _state.pid == os.getpid():
            return
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import MetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        resource = Resource.create(
            {"service.name": settings.otel_service_name, "faas.name": function}
        )
        tracer_provider = TracerProvider(resource=resource, sampler=_sampler(settings))
        readers: list[MetricReader] = []
        endpoint = settings.otel_exporter_otlp_endpoint
        if endpoint is not None:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            base = str(endpoint).rstrip("/")
            tracer_provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces"))
            )
            readers.append(
                PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{base}/v1/metrics"))
            )
        _state.exporting = endpoint is not None
        _state.prometheus = settings.metrics_prometheus
        if _state.prometheus:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            readers.append(PrometheusMetricReader())
        _state.tracer_provider = tracer_provider
        # One tracer for the process: the SDK builds a new one (and its scope) on every call.
        _state.tracer = tracer_provider.get_tracer("otel-worker")
        _state.meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        _state.instruments = None
        # Database spans only matter where spans are exported; the instrumentation costs a
        # few hundred milliseconds of every cold start.
        if instrument_psycopg and endpoint is not None:
            from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

            instrumentor = PsycopgInstrumentor()
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument(
                    tracer_provider=tracer_provider,
                    meter_provider=_state.meter_provider,
                    enable_commenter=False,
                )
        _state.pid = os.getpid()


def shutdown() -> None:
    """Flush and stop the exporters (at process exit)."""
    for provider in (_state.tracer_provider, _state.meter_provider):
        stop = getattr(provider, "shutdown", None)
        if stop is not None:
            stop()


def tracer_provider() -> trace.TracerProvider:
    """This process's tracer provider (a no-op one before `setup`)."""
    return _state.tracer_provider or trace.NoOpTracerProvider()


def tracer() -> trace.Tracer:
    """The tracer for otel-worker's own spans."""
    return _state.tracer or trace.NoOpTracer()


@contextlib.contextmanager
def span(
    name: str,
    parent: Mapping[str, str] | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[trace.Span]:
    """A span named `name` with `attributes`; `parent` carries a W3C `traceparent` to
    continue a trace."""
    token = None
    if parent is not None:
        token = otel_context.attach(_PROPAGATOR.extract(dict(parent)))
    try:
        with tracer().start_as_current_span(name, attributes=attributes) as current:
            yield current
    finally:
        if token is not None:
            otel_context.detach(token)


def in_span() -> bool:
    """True inside a valid span (one an instrumentation or `span` started)."""
    return trace.get_current_span().get_span_context().is_valid


def traceparent() -> str | None:
    """The W3C traceparent of the current span, to put on outgoing events and requests."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def exporting() -> bool:
    """True when spans leave this process (an OTLP endpoint is configured)."""
    return _state.exporting


def prometheus_enabled() -> bool:
    """True when this process serves metrics for Prometheus to scrape."""
    return _state.prometheus


@dataclass(frozen=True)
class Instruments:
    """The application's metrics."""

    jobs: metrics.Counter
    job_duration: metrics.Histogram
    points: metrics.Counter
    dropped: metrics.Counter
    csv_bytes: metrics.Histogram
    db_read: metrics.Histogram


def instruments() -> Instruments:
    """The application's metrics, created on first use."""
    if _state.instruments is None:
        meter = (_state.meter_provider or metrics.NoOpMeterProvider()).get_meter("otel-worker")
        _state.instruments = Instruments(
            jobs=meter.create_counter(
                "otel_worker.jobs", unit="{job}", description="finished jobs, by outcome"
            ),
            job_duration=meter.create_histogram(
                "otel_worker.job.duration", unit="s", description="claim to finish"
            ),
            points=meter.create_counter(
                "otel_worker.points", unit="{point}", description="points read"
            ),
            dropped=meter.create_counter(
                "otel_worker.points.dropped", unit="{point}", description="dropped, by rule"
            ),
            csv_bytes=meter.create_histogram(
                "otel_worker.csv.size", unit="By", description="size of uploaded CSVs"
            ),
            db_read=meter.create_histogram(
                "otel_worker.db.read.duration", unit="s", description="reading a job's points"
            ),
        )
        meter.create_observable_gauge(
            "otel_worker.queue.depth",
            callbacks=[lambda _options: [metrics.Observation(_state.queue_depth)]],
            unit="{job}",
            description="queued jobs, as last seen by the sweep",
        )
        meter.create_observable_gauge(
            "otel_worker.queue.oldest_age",
            callbacks=[lambda _options: [metrics.Observation(_state.oldest_queued_age)]],
            unit="s",
            description="age of the oldest queued job, as last seen by the sweep",
        )
    return _state.instruments


def record_queue(depth: int, oldest_age_seconds: float) -> None:
    """What the sweep saw of the queue, for the queue gauges."""
    instruments()
    _state.queue_depth = depth
    _state.oldest_queued_age = oldest_age_seconds


def start(function: str, settings: TelemetrySettings, *, database: bool = False) -> None:
    """Set up this serving process's logs and telemetry (once) and say it started."""
    from shared.logs import setup_logging

    first = _state.pid != os.getpid()
    setup_logging(settings.log_level, log_format=settings.log_format)
    setup(function, settings, instrument_psycopg=database)
    if first:
        logging.getLogger(function).info(
            "%s started",
            function,
            extra={"pid": os.getpid(), "service": settings.otel_service_name},
        )


class Phases:
    """The phases of one job, each timed (milliseconds) and traced as its own span, so a
    job's result can say where its time went."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> Iterator[trace.Span]:
        """Time the body as phase `name` (added to an earlier phase of that name) in a span
        of the same name."""
        started = time.perf_counter()
        try:
            with span(name, attributes=attributes) as current:
                yield current
        finally:
            self.add(name, (time.perf_counter() - started) * 1000)

    def add(self, name: str, ms: float) -> None:
        """Count `ms` milliseconds toward phase `name` (one timed outside a `phase`)."""
        self.ms[name] = self.ms.get(name, 0.0) + ms

    def rounded(self) -> dict[str, float]:
        """The phases so far, to a hundredth of a millisecond."""
        return {name: round(ms, 2) for name, ms in self.ms.items()}
