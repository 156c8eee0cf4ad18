"""The gRPC ingress: `distance.v1.DistanceService` in front of submit and status.

Runs as a plain process (`python functions/ingress/main.py`) listening on `$PORT` (h2c on
Knative) or `GRPC_PORT`. Serves gRPC health checking and reflection, and drains on SIGTERM.
With `HTTP_PORT` it also answers the original's plain-HTTP `/download/...` there.
"""

from __future__ import annotations

import logging
import signal
import sys
from concurrent import futures
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared import config, telemetry
from shared.downloads import DownloadRelay
from shared.grpc_adapter import (
    SERVICE,
    BearerAuth,
    DecodeGuard,
    DependencyHealth,
    DistanceService,
    Upstream,
)
from shared.rpc.distance.v1 import distance_pb2_grpc

log = logging.getLogger("ingress")
WORKERS = 16
WAITS = WORKERS // 2
"""GetJobStatus calls that may wait for a finish at once: the other threads stay free."""
DRAIN_SECONDS = 20


def build_server(
    grpc_settings: config.GrpcSettings, upstream: Upstream
) -> tuple[grpc.Server, DependencyHealth]:
    """The server with DistanceService, health and reflection, bound to its port (OSError
    when the port is taken)."""
    interceptors: list[grpc.ServerInterceptor] = []
    if telemetry.exporting():
        # Traced calls (health checks excluded) only where spans are exported: the
        # instrumentation costs a good part of a cold start.
        from opentelemetry.instrumentation.grpc import filters, server_interceptor

        interceptors.append(
            server_interceptor(  # type: ignore[no-untyped-call]
                tracer_provider=telemetry.tracer_provider(),
                filter_=filters.negate(filters.health_check()),
            )
        )
    interceptors.append(DecodeGuard())
    if grpc_settings.grpc_auth_token is not None:
        interceptors.append(BearerAuth(grpc_settings.grpc_auth_token.get_secret_value()))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", grpc_settings.grpc_max_receive_bytes),
            # grpcio sets SO_REUSEPORT on Linux: a second ingress would share the port and
            # take half the calls instead of failing to start.
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=WORKERS * 8,
    )
    # The generated registration carries no annotations.
    distance_pb2_grpc.add_DistanceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        DistanceService(upstream, max_waits=WAITS), server
    )
    health_servicer = DependencyHealth(upstream)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    address = f"[::]:{grpc_settings.listen_port}"
    tls = grpc_settings.tls
    try:
        if tls is None:
            server.add_insecure_port(address)  # h2c: Knative's mesh carries it
        else:
            server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
    except RuntimeError:  # how grpcio reports a failed bind
        raise OSError(
            f"cannot listen on port {grpc_settings.listen_port} (is another process using it?)"
        ) from None
    return server, health_servicer


def main() -> int:
    """Configure, serve until SIGTERM/SIGINT, then drain in-flight calls."""
    try:
        telemetry_settings = config.load(config.TelemetrySettings)
        grpc_settings = config.load(config.GrpcSettings)
        upstream_settings = config.load(config.UpstreamSettings)
        config.load(config.EventSettings)
    except config.ConfigError as exc:
        sys.stderr.write(f"ingress: {exc}\n")
        return 2
    telemetry.start("ingress", telemetry_settings)
    source = f"{config.load(config.EventSettings).event_source.rstrip('/')}/ingress"
    upstream = Upstream(upstream_settings, source=source, pool_size=WORKERS)
    relay: DownloadRelay | None = None
    try:
        server, health_servicer = build_server(grpc_settings, upstream)
        if grpc_settings.http_port is not None:
            relay = DownloadRelay(upstream, grpc_settings.http_port, grpc_settings.download_proxy)
    except OSError as exc:
        sys.stderr.write(f"ingress: {exc}\n")
        telemetry.shutdown()
        return 1
    if grpc_settings.grpc_auth_token is None:
        # Only with GRPC_ALLOW_UNAUTHENTICATED=true (else the settings refused to load).
        log.warning("GRPC_AUTH_TOKEN is not set: every caller is accepted")
    server.start()
    if relay is not None:
        relay.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "ingress serving",
        extra={
            "port": grpc_settings.listen_port,
            "http_port": grpc_settings.http_port,
            "auth": grpc_settings.grpc_auth_token is not None,
            "tls": grpc_settings.tls is not None,
        },
    )

    def drain(signum: int, _frame: FrameType | None) -> None:
        log.info("draining", extra={"signal": signal.Signals(signum).name})
        health_servicer.enter_graceful_shutdown()  # watchers see NOT_SERVING
        if relay is not None:
            relay.stop()
        server.stop(grace=DRAIN_SECONDS)  # no new calls; in-flight ones finish
        health_servicer.end_watches()  # open streams would hold the drain to its end

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    server.wait_for_termination()
    telemetry.shutdown()
    log.info("ingress stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
