"""Secret canaries: the system runs with a database password, S3 secret keys and a gRPC
token that are unique marked strings, through jobs, failed jobs, refused calls and
outages of the database and the object store. Afterwards none of them appears in any log
line, error message, metric, object, reply event or job row."""

from __future__ import annotations

import datetime as dt
import io
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import psycopg
import pytest
import urllib3

from shared.contracts import JobAccepted
from shared.dev.stack import S3Identity, SeaweedS3, wait_until
from shared.dev.tracks import TrackSpec, generate
from shared.locations import write_points
from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc
from tests.conftest import S3_REGION, Database, S3Server
from tests.reliability.conftest import LEASE_SECONDS, Figures
from tests.reliability.postgres import OwnedPostgres
from tests.stack import Stack, start_stack

TAG = uuid.uuid4().hex[:12]
CANARIES = {
    "database password": f"canaryDB{TAG}",
    "S3 secret (admin)": f"canaryS3admin{TAG}",
    "S3 secret (compute)": f"canaryS3write{TAG}",
    "S3 secret (status)": f"canaryS3read{TAG}",
    "gRPC token": f"canaryTOKEN{TAG}",
}
DAY = dt.date(2024, 3, 4)


class Capture(io.TextIOBase):
    """Every line the services, the broker and the sweep log, kept."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.lines.append(text)
        return len(text)


def leaks(text: str) -> list[str]:
    """The canaries `text` holds."""
    return [name for name, canary in CANARIES.items() if canary in text]


@pytest.fixture(scope="module")
def database() -> Iterator[OwnedPostgres]:
    server = OwnedPostgres(password=CANARIES["database password"]).create()
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            write_points(conn, generate(TrackSpec(seed=7, start=DAY, days=4)).points)
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    writer = S3Identity("compute", "canary-compute", CANARIES["S3 secret (compute)"], ("Write",))
    reader = S3Identity("status", "canary-status", CANARIES["S3 secret (status)"], ("Read", "List"))
    server = SeaweedS3(
        data_dir=tmp_path_factory.mktemp("canary-s3"),
        access_key="canary-admin",
        secret_key=CANARIES["S3 secret (admin)"],
        others=(writer, reader),
    ).start()
    try:
        yield S3Server(
            server.endpoint, server.access_key, server.secret_key, S3_REGION, server, writer, reader
        )
    finally:
        server.stop()


def _submit(stack: Stack, body: dict[str, str]) -> urllib3.BaseHTTPResponse:
    return urllib3.request("POST", stack.url("submit"), json=body, retries=False, timeout=30)


def test_no_secret_leaks_through_a_run_of_jobs_failures_and_outages(
    database: OwnedPostgres, object_store: S3Server, score: Figures
) -> None:
    out = Capture()
    place = Database(database.dsn, "127.0.0.1", database.port, "postgres", "postgres")
    stack = start_stack(
        place,
        object_store,
        out=out,
        JOB_LEASE_SECONDS=str(LEASE_SECONDS),
        GRPC_AUTH_TOKEN=CANARIES["gRPC token"],
        METRICS_PROMETHEUS="true",
        LOG_LEVEL="INFO",
        # The 6th has ~2400 fixes and fits, the 5th ~2900 and fails (a range would not: its
        # CSV lists the days' CSVs when their rows are too many).
        MAX_CSV_ROWS="2600",
    )
    seen: list[str] = []  # every answer a caller got
    jobs: list[uuid.UUID] = []
    try:
        ok = _submit(stack, {"date": "2024-03-06", "device_id": "phone1"})
        too_big = _submit(stack, {"date": "2024-03-05", "device_id": "phone1"})
        refused = _submit(stack, {"date": "yesterday"})
        seen += [r.data.decode() for r in (ok, too_big, refused)]
        jobs += [JobAccepted.model_validate_json(r.data).job.job_id for r in (ok, too_big)]

        with grpc.insecure_channel(stack.url("ingress")) as channel:
            stub = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]
            token = CANARIES["gRPC token"]
            reply = stub.CalculateDistanceFromHome(
                pb.CalculateDistanceRequest(date="2024-03-06", device_id="phone1"),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=30,
            )
            jobs.append(uuid.UUID(reply.job_id))
            seen.append(str(reply))
            for wrong in (f"Bearer {token}x", f"Bearer {token[:-1]}", token, f"Basic {token}"):
                with pytest.raises(grpc.RpcError) as error:
                    stub.ListJobs(
                        pb.ListJobsRequest(), metadata=[("authorization", wrong)], timeout=10
                    )
                assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
                seen.append(f"{error.value.details()} {error.value.trailing_metadata()}")
        for job_id in jobs:
            stack.wait_finished(job_id, timeout=60)

        # The object store down while a job runs: retried, then done once it is back.
        object_store.server.stop()
        during = _submit(stack, {"date": "2024-03-06", "device_id": "phone1"})
        seen.append(during.data.decode())
        jobs.append(JobAccepted.model_validate_json(during.data).job.job_id)
        wait_until(lambda: stack.job(jobs[-1]).error_message is not None, 30, "a failed try")
        seen.append(stack.job(jobs[-1]).model_dump_json())
        object_store.server.start()
        # The database down: callers get 503s, the sweep and the pools fail and log it.
        database.stop()
        for url in (stack.url("submit"), f"{stack.url('status')}/jobs/{jobs[0]}"):
            answer = urllib3.request("GET" if "jobs" in url else "POST", url, json={
                "date": "2024-03-07"}, retries=False, timeout=30)  # fmt: skip
            assert answer.status == 503, answer.data
            seen.append(answer.data.decode())
        time.sleep(1.5)  # a few sweeps fail meanwhile
        database.start()
        finished = [stack.wait_finished(job_id, timeout=90) for job_id in jobs]
        # The job of the outage may have run out of attempts meanwhile: a failure is fine.
        assert [job.status for job in finished[:3]] == ["completed", "failed", "completed"]
        seen += [job.model_dump_json() for job in finished]
        listing = urllib3.request("GET", f"{stack.url('status')}/jobs", retries=False)
        seen.append(listing.data.decode())
        metrics = [
            urllib3.request("GET", f"{stack.url(name)}/metrics", retries=False).data.decode()
            for name in ("submit", "compute", "status")
        ]
    finally:
        stack.supervisor.stop()
    owner = object_store.client()
    objects = [
        owner.get_object(stack.bucket, o.object_name or "").read().decode(errors="replace")
        for o in owner.list_objects(stack.bucket, recursive=True)
    ]
    with psycopg.connect(database.dsn) as conn:
        rows = [
            str(row) for (row,) in conn.execute("SELECT row_to_json(j) FROM otel_worker.jobs j")
        ]
    logged = "".join(out.lines)
    places = {
        "log": [logged],
        "answers and errors": seen,
        "metrics": metrics,
        "objects": objects,
        "job rows": rows,
    }
    assert leaks(f"-{CANARIES['gRPC token']}-")  # the search itself finds a planted one
    assert "could not" in logged or "unavailable" in logged.lower()  # failures were logged
    found = {where: sorted({n for t in texts for n in leaks(t)}) for where, texts in places.items()}
    assert found == {where: [] for where in places}
    scanned = sum(len(t) for texts in places.values() for t in texts)
    score.jobs, score.lost = len(jobs), 0
    score.note = f"{len(CANARIES)} canaries, {scanned // 1024} KiB scanned, none found"
