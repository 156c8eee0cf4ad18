"""Cold start of each function, as Knative pays it when a scaled-to-zero service wakes up.

Run with `make coldstart`. For every function: process start -> ready (listening and its
readiness check answered: /readyz, or gRPC health for the ingress) and -> first answered
real request. Each is measured `--runs` times against a real PostgreSQL, PgBouncer and
SeaweedFS; the table shows medians (and the best run). `--set NAME=VALUE` gives every
function a setting (THREADS, WORKERS, ...); `taskset -c 0 make coldstart` measures a
one-core pod.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import grpc
import psycopg
import urllib3

from shared import config, events
from shared.contracts import JobQueued
from shared.dev.stack import (
    ServiceProcess,
    free_ports,
    grpc_serving,
    http_function,
    http_status,
    ingress_process,
)
from shared.dev.tracks import TrackSpec
from shared.jobs import JobRequest, JobStore
from shared.maintenance import migrate_jobs
from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc
from tests.bench.services import services

TARGET_S = {"submit": 1.0, "status": 1.0, "ingress": 1.0, "compute": 1.2}


def _poll(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, grpc.RpcError, urllib3.exceptions.HTTPError):
            if check():
                return
        time.sleep(0.005)
    raise TimeoutError("not ready")


def measure(
    process: ServiceProcess, ready: Callable[[], bool], first: Callable[[], object]
) -> tuple[float, float]:
    """Seconds from start to ready, and to the first answered request."""
    started = time.monotonic()
    process.start(stdout=subprocess.DEVNULL)
    try:
        _poll(ready)
        ready_at = time.monotonic() - started
        first()
        return ready_at, time.monotonic() - started
    finally:
        process.stop()


@contextlib.contextmanager
def environment(admin: str) -> Iterator[tuple[dict[str, str], JobStore]]:
    with services(admin, TrackSpec(seed=1, start=dt.date(2024, 3, 1), days=5)) as (
        database,
        _direct,
        s3,
    ):
        migrate_jobs(config.DatabaseSettings(database_url=database.dsn))
        env = {k: v for k, v in os.environ.items() if k not in config.variable_names()}
        env |= {
            "DATABASE_URL": database.dsn,
            "MINIO_ENDPOINT": s3.endpoint,
            "MINIO_ACCESS_KEY": s3.access_key,
            "MINIO_SECRET_KEY": s3.secret_key,
            "MINIO_BUCKET": "coldstart",
            "LOG_LEVEL": "WARNING",
            "GRPC_ALLOW_UNAUTHENTICATED": "true",  # the ingress on loopback, no token
        }
        with psycopg.connect(database.dsn, autocommit=True, prepare_threshold=None) as conn:
            yield env, JobStore(conn, config.JobSettings(), schema="otel_worker")


def _one_run(
    env: dict[str, str],
    store: JobStore,
    http: urllib3.PoolManager,
    results: dict[str, list[tuple[float, float]]],
) -> None:
    ports = dict(zip(results, free_ports(4), strict=True))
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    results["submit"].append(
        measure(
            http_function("submit", ports["submit"], env),
            lambda: http_status(f"{urls['submit']}/readyz") == 200,
            lambda: http.request("POST", urls["submit"], json={"date": "2024-03-02"}),
        )
    )
    results["status"].append(
        measure(
            http_function("status", ports["status"], env),
            lambda: http_status(f"{urls['status']}/readyz") == 200,
            lambda: http.request("GET", f"{urls['status']}/jobs?limit=5"),
        )
    )
    request = JobRequest(
        date_from=dt.date(2024, 3, 2),
        date_to=dt.date(2024, 3, 2),
        timezone="America/New_York",
        parameters=config.AnalysisSettings().engine_params().model_dump(mode="json"),
    )
    job, _ = store.create(request, idempotency_key=f"cold-{uuid.uuid4()}")
    event = events.new_event(events.JOB_QUEUED, JobQueued(job_id=job.id), source="/cold")
    headers, body = events.binary(event)

    def deliver() -> None:
        answer = http.request("POST", urls["compute"], headers=headers, body=body)
        assert answer.status == 200, answer.data

    results["compute"].append(
        measure(
            http_function("compute", ports["compute"], env),
            lambda: http_status(f"{urls['compute']}/readyz") == 200,
            deliver,
        )
    )
    # The ingress needs its upstreams: keep a status running for it.
    upstream = http_function("status", ports["status"], env).start(stdout=subprocess.DEVNULL)
    target = f"127.0.0.1:{ports['ingress']}"

    def list_jobs() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]
            stub.ListJobs(pb.ListJobsRequest(limit=5), timeout=10)

    try:
        _poll(lambda: http_status(f"{urls['status']}/readyz") == 200)
        ingress = ingress_process(
            ports["ingress"], {**env, "SUBMIT_URL": urls["submit"], "STATUS_URL": urls["status"]}
        )
        results["ingress"].append(
            measure(ingress, lambda: grpc_serving(target, timeout=0.5), list_jobs)
        )
    finally:
        upstream.stop()


def run(runs: int, admin: str, settings: dict[str, str]) -> None:
    results: dict[str, list[tuple[float, float]]] = {
        n: [] for n in ("submit", "status", "compute", "ingress")
    }
    with environment(admin) as (env, store):
        http = urllib3.PoolManager(retries=False)
        for _ in range(runs):
            _one_run({**env, **settings}, store, http, results)
    cores = len(os.sched_getaffinity(0))
    extra = ", ".join(f"{name}={value}" for name, value in settings.items())
    print(
        f"cold start on {cores} core(s), median of {runs} runs (best in brackets)"
        + (f", with {extra}" if extra else "")
    )
    print(f"{'function':<10} {'ready':>16} {'first request':>18} {'target (ready)':>15}")
    for name, values in results.items():
        ready = [v[0] for v in values]
        first = [v[1] for v in values]
        print(
            f"{name:<10} {statistics.median(ready):>9.2f} s ({min(ready):.2f}) "
            f"{statistics.median(first):>11.2f} s ({min(first):.2f}) {TARGET_S[name]:>13.1f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every function (e.g. THREADS=2, WORKERS=1); repeatable",
    )
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set if "=" in item)
    if len(settings) != len(args.set):
        parser.error("--set takes NAME=VALUE")
    admin = os.environ.get("BENCH_DATABASE_URL") or os.environ.get(
        "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    run(args.runs, admin, settings)


if __name__ == "__main__":
    main()
