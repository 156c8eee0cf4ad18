"""The gRPC ingress: serves gRPC health checking and reflection so far.

DistanceService itself lands with the ingress issue.
"""

from __future__ import annotations

import logging
import signal
import sys
from concurrent import futures
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared import config
from shared.logs import setup_logging

log = logging.getLogger("ingress")


def serve(port: int) -> None:
    """Serve on `port` until SIGTERM/SIGINT, then drain for up to 10 s."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    server.add_insecure_port(f"[::]:{port}")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("ingress listening", extra={"port": port})

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("draining", extra={"signal": signum})
        health_servicer.enter_graceful_shutdown()
        server.stop(grace=10)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.wait_for_termination()


def main() -> int:
    """Entry point: configure, then serve."""
    try:
        telemetry = config.load(config.TelemetrySettings)
        port = config.load(config.GrpcSettings).listen_port
    except config.ConfigError as exc:
        sys.stderr.write(f"ingress: {exc}\n")
        return 2
    setup_logging(telemetry.log_level)
    serve(port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
