"""The whole system end to end: real PostgreSQL (through PgBouncer), a real S3 server, the
dev broker and every function as its own process, started by the same supervisor as
`otel-worker dev`.

Each test names the failure a user would notice: a lost job, a duplicate computation, a
completed job without its CSV, a retry storm, a request cut off by a shutdown.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import urllib3
from lxml import etree

from shared import config, events
from shared.contracts import JobAccepted, JobView
from shared.dev.stack import free_ports, http_function, http_status, wait_until
from shared.engine import haversine_km
from shared.jobs import JobRequest, JobStore
from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc
from tests.conftest import Database, S3Server, start_s3
from tests.stack import Stack, dead_letter_tries, post, request_event, start_stack

DAY = dt.date(2024, 3, 12)
GPX_SCHEMA = Path(__file__).resolve().parents[1] / "fixtures" / "gpx-1.1.xsd"
"""A weekday of the seeded data (one device, 30 s fixes)."""


def test_a_request_event_becomes_a_completed_job_with_a_csv_that_matches(stack: Stack) -> None:
    headers, body = request_event({"date": DAY.isoformat(), "device_id": "phone1"})
    reply = post(stack.url("submit"), headers, body)
    accepted = _accepted(reply)
    assert reply.headers["ce-type"] == events.JOB_ACCEPTED
    assert accepted.created
    assert accepted.job.requester is not None
    assert accepted.job.requester.source == "/tests/pipeline"

    job = stack.wait_finished(accepted.job.job_id)
    assert job.status == "completed", job.error_message
    assert job.attempts == 1
    assert job.csv is not None
    assert job.result is not None
    with urllib.request.urlopen(job.csv.url, timeout=10) as download:
        rows = list(csv.DictReader(io.TextIOWrapper(download, "utf-8")))
    summary = job.result
    assert len(rows) == summary["points"]["read"] > 2000
    kept = [r for r in rows if not r["dropped_by"]]
    assert len(kept) == summary["points"]["used"]
    assert {r["device_id"] for r in rows} == {"phone1"}
    assert abs(sum(float(r["segment_km"]) for r in kept) - summary["path_km"]) < 0.01
    # Jitter fixes add no path but are real positions: they count for the distances, a
    # fix of a stay at the stay's centre (one noisy fix there cannot set the farthest).
    home = (summary["parameters"]["home_latitude"], summary["parameters"]["home_longitude"])
    centre_km = {
        str(stay["id"]): float(haversine_km(*home, stay["latitude"], stay["longitude"]))
        for stay in summary["stays"]
    }
    observed = [r for r in rows if r["dropped_by"] in {"", "jitter"}]
    farthest = max(centre_km.get(r["stay"], float(r["distance_from_home_km"])) for r in observed)
    assert farthest == pytest.approx(summary["max_distance_km"], abs=1e-4)
    assert rows[0]["timestamp"].startswith(f"{DAY.isoformat()}T00:")
    assert rows[0]["timestamp"].endswith("-04:00")  # EDT: local days, not UTC days
    assert job.csv_key is not None
    assert job.csv_key.rsplit("/", 1)[1] == f"distance_20240312_phone1_{job.job_id.hex[:8]}.csv"


def test_a_job_completes_with_each_function_holding_only_its_credentials(
    stack: Stack,
) -> None:
    """As the manifests deploy them (DEPLOYMENT.md#secrets): the ingress has no database
    or object store credentials, compute may only write objects and status only read
    them. A job asked over gRPC still completes and its download link works."""

    def environment(name: str) -> dict[str, str]:
        process = stack.supervisor.services[name].process
        assert process is not None
        raw = Path(f"/proc/{process.pid}/environ").read_bytes().decode()
        return dict(entry.split("=", 1) for entry in raw.split("\0") if entry)

    assert environment("compute")["MINIO_ACCESS_KEY"] == stack.s3.writer.access_key
    assert environment("status")["MINIO_ACCESS_KEY"] == stack.s3.reader.access_key
    assert "MINIO_ACCESS_KEY" not in environment("submit")
    assert not {"DATABASE_URL", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"} & set(
        environment("ingress")
    )
    with grpc.insecure_channel(stack.url("ingress")) as channel:
        stub = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]
        queued = stub.CalculateDistanceFromHome(
            pb.CalculateDistanceRequest(date="2024-03-14", device_id="phone2"), timeout=10
        )
        assert stack.wait_finished(queued.job_id).status == "completed"
        reply = stub.GetJobStatus(pb.GetJobStatusRequest(job_id=queued.job_id), timeout=10)
    download = urllib3.request("GET", reply.result.csv_url)
    assert download.status == 200
    assert download.data.startswith(b"timestamp,device_id,")
    assert reply.result.total_locations == download.data.count(b"\n") - 1


def test_duplicate_deliveries_make_one_job_one_object_one_computation(stack: Stack) -> None:
    request_id = str(uuid.uuid4())
    headers, body = request_event({"date": "2024-03-13", "device_id": "phone2"}, request_id)
    replies = [post(stack.broker, headers, body) for _ in range(10)]
    assert {r.status for r in replies} == {202}
    with stack.db() as conn:

        def one_job() -> bool:
            rows = conn.execute(
                "SELECT count(*) FROM otel_worker.jobs WHERE requester_id = %s", (request_id,)
            ).fetchone()
            return rows == (1,)

        wait_until(one_job, 20, "the job row")
        (job_id,) = conn.execute(
            "SELECT id FROM otel_worker.jobs WHERE requester_id = %s", (request_id,)
        ).fetchone() or (None,)
    job = stack.wait_finished(job_id)
    assert job.status == "completed"
    # Now deliver its job.queued ten more times, straight to compute.
    queued = events.new_event(
        events.JOB_QUEUED, events.DATA_MODELS[events.JOB_QUEUED](job_id=job_id), source="/tests"
    )
    q_headers, q_body = events.binary(queued)
    repeats = [post(stack.url("compute"), q_headers, q_body) for _ in range(10)]
    assert {r.status for r in repeats} == {200}
    # Each answer is the outcome again (its first reply may have been lost), the same event:
    # one id, which a consumer uses to drop the repeats.
    assert {(r.headers["ce-type"], r.headers["ce-id"]) for r in repeats} == {
        (events.JOB_COMPLETED, f"{job_id}.completed")
    }
    assert {json.loads(r.data)["job"]["completed_at"] for r in repeats} == {
        job.completed_at.isoformat().replace("+00:00", "Z")
    }
    again = stack.job(job_id)
    assert again.attempts == 1
    assert again.completed_at == job.completed_at
    assert job.summary_key is not None
    series = job.summary_key.replace(".summary.json", ".series.json")
    tracks = job.summary_key.replace(".summary.json", ".gpx")
    stored = [k for k in stack.objects() if str(job_id) in k]
    assert sorted(stored) == sorted([job.csv_key, job.summary_key, series, tracks])


def test_a_poison_event_is_dead_lettered_without_retry(stack: Stack) -> None:
    request_id = str(uuid.uuid4())
    assert dead_letter_tries(stack, {"date": "2024-02-30"}, request_id) == [(400, "final")]
    with stack.db() as conn:
        count = conn.execute(
            "SELECT count(*) FROM otel_worker.jobs WHERE requester_id = %s", (request_id,)
        ).fetchone()
    assert count == (0,)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": 7}, "id: must be a string (got 7)"),
        ({"source": ""}, "source: must not be empty"),
    ],
)
def test_a_structured_event_with_a_bad_attribute_is_refused_naming_it(
    stack: Stack, change: dict[str, object], message: str
) -> None:
    event = {
        "specversion": "1.0",
        "type": events.DISTANCE_REQUESTED,
        "source": "/tests/pipeline",
        "id": str(uuid.uuid4()),
        "data": {"date": "2024-03-14"},
    }
    headers = {"Content-Type": "application/cloudevents+json"}
    reply = post(stack.url("submit"), headers, json.dumps({**event, **change}).encode())
    assert reply.status == 400  # not retried: it can never succeed
    assert json.loads(reply.data)["error"] == message


@pytest.mark.parametrize(("header", "value"), [("ce-id", None), ("ce-source", "")])
def test_a_binary_event_without_a_required_attribute_is_refused_naming_it(
    stack: Stack, header: str, value: str | None
) -> None:
    headers, body = request_event({"date": "2024-03-14"})
    headers = {k: v for k, v in headers.items() if k != header}
    if value is not None:
        headers[header] = value
    reply = post(stack.url("submit"), headers, body)
    assert reply.status == 400
    assert json.loads(reply.data)["error"].startswith(f"{header}: ")


def test_plain_json_post_gets_json_and_bad_fields_are_named(stack: Stack) -> None:
    ok = urllib3.request(
        "POST",
        stack.url("submit"),
        json={"date": "2024-03-14", "device_id": "phone3"},
        retries=False,
    )
    assert ok.status == 202
    assert JobAccepted.model_validate_json(ok.data).created
    for data, field in [
        ({"date": "2024-13-01"}, "date"),
        ({"date": "2023-03-01", "end_date": "2024-05-01"}, "end_date"),
        ({"date": "2024-03-01", "device_id": "bad id"}, "device_id"),
        ({"date": "2024-03-01", "timezone": "Nowhere/City"}, "timezone"),
        ({"date": "2999-01-01"}, "date"),
        ({"date": "0001-01-01"}, "date"),
        ({"date": "2024-03-01", "timezone": "posix/America/New_York"}, "timezone"),
    ]:
        bad = urllib3.request("POST", stack.url("submit"), json=data, retries=False)
        assert bad.status == 400, data
        assert json.loads(bad.data)["error"].startswith(f"{field}:"), bad.data


def test_idempotency_keys_out_of_bounds_are_refused_or_hashed(stack: Stack) -> None:
    for key in ("", "k" * 201):
        bad = urllib3.request(
            "POST",
            stack.url("submit"),
            json={"date": "2024-03-14"},
            headers={"Idempotency-Key": key},
            retries=False,
        )
        assert bad.status == 400, key
        assert json.loads(bad.data)["error"].startswith("Idempotency-Key: must be 1 to 200"), key
    # An event names its own (source, id), of any length: still one job per event.
    headers, body = request_event({"date": "2024-03-14", "device_id": "phone2"}, "e" * 3000)
    first, again = (_accepted(post(stack.url("submit"), headers, body)) for _ in range(2))
    assert (first.created, again.created) == (True, False)
    assert first.job.job_id == again.job.job_id
    assert first.job.idempotency_key is not None
    assert first.job.idempotency_key.startswith("sha256:")


def test_compute_killed_mid_job_is_taken_over_after_the_lease(stack: Stack) -> None:
    headers, body = request_event({"date": "2024-03-01", "end_date": "2024-03-31"})
    reply = post(stack.url("submit"), headers, body)
    job_id = _accepted(reply).job.job_id
    compute = stack.supervisor.services["compute"]
    with stack.db() as conn:
        wait_until(lambda: _status(conn, job_id) == "processing", 30, "processing", interval=0.005)
    compute.signal(signal.SIGKILL)
    assert compute.process is not None
    compute.process.wait(timeout=10)
    stack.supervisor.restart("compute")
    job = stack.wait_finished(job_id, timeout=90)
    assert job.status == "completed", job.error_message
    assert job.attempts == 2


def test_broker_down_at_submit_time_is_published_by_the_sweep(
    stack: Stack, seeded: Database
) -> None:
    # A submit whose broker is unreachable: the job is committed but not announced.
    env = {**stack.env, "K_SINK": "http://127.0.0.1:9/", "PUBLISH_ATTEMPTS": "1"}
    lonely = http_function("submit", free_ports(1)[0], env).start()
    try:
        wait_until(lambda: http_status(f"{lonely.url}/readyz") == 200, 30, "submit")
        reply = urllib3.request(
            "POST", lonely.url, json={"date": "2024-03-15", "device_id": "phone1"}
        )
        assert reply.status == 202
        job_id = JobAccepted.model_validate_json(reply.data).job.job_id
    finally:
        lonely.stop()
    job = stack.wait_finished(job_id, timeout=60)  # the supervisor's sweep runs every 0.5 s
    assert job.status == "completed"
    broker = stack.supervisor.broker
    assert broker is not None
    announced = {h.event_source for h in broker.hops if h.subject == str(job_id)}
    assert announced == {"/otel-worker/sweep"}


def _accepted(reply: urllib3.BaseHTTPResponse) -> JobAccepted:
    assert reply.status == 200, reply.data
    return events.data_as(events.parse(dict(reply.headers.items()), reply.data), JobAccepted)


def _status(conn: psycopg.Connection[tuple[Any, ...]], job_id: uuid.UUID) -> str | None:
    row = conn.execute("SELECT status FROM otel_worker.jobs WHERE id = %s", (job_id,)).fetchone()
    return str(row[0]) if row else None


def test_sigterm_lets_the_running_request_finish(stack: Stack) -> None:
    """Knative sends SIGTERM when it scales a pod down: the delivery in progress must
    complete (one attempt, no takeover after the lease), then the process exits."""
    headers, body = request_event({"date": "2024-03-02", "end_date": "2024-03-31"})
    reply = post(stack.url("submit"), headers, body)
    job_id = _accepted(reply).job.job_id
    compute = stack.supervisor.services["compute"]
    with stack.db() as conn:
        wait_until(lambda: _status(conn, job_id) == "processing", 30, "processing", interval=0.005)
    compute.signal(signal.SIGTERM)
    assert compute.process is not None
    assert compute.process.wait(timeout=60) == 0
    with stack.db() as conn:
        assert _status(conn, job_id) == "completed"
    stack.supervisor.restart("compute")
    job = stack.job(job_id)
    assert job.attempts == 1


def test_object_store_down_is_retried_then_fails_clearly_never_completed_without_csv(
    seeded: Database, tmp_path: Path
) -> None:
    s3 = start_s3(tmp_path / "weed", "k-down")
    own = s3.server
    stack = start_stack(seeded, s3, JOB_MAX_ATTEMPTS="2")
    try:
        bucket_ready = urllib3.request(
            "POST", stack.url("submit"), json={"date": "2024-03-05", "device_id": "phone1"}
        )
        first = JobAccepted.model_validate_json(bucket_ready.data).job.job_id
        assert stack.wait_finished(first).status == "completed"
        own.stop()
        reply = urllib3.request(
            "POST", stack.url("submit"), json={"date": "2024-03-06", "device_id": "phone1"}
        )
        job_id = JobAccepted.model_validate_json(reply.data).job.job_id
        job = stack.wait_finished(job_id, timeout=120)
        assert job.status == "failed"
        assert job.attempts == 2
        assert job.error_message is not None
        assert "gave up after 2 attempt(s)" in job.error_message
        assert "uploading" in job.error_message or "bucket" in job.error_message
        with stack.db() as conn:
            orphans = conn.execute(
                "SELECT count(*) FROM otel_worker.jobs"
                " WHERE status = 'completed' AND csv_key IS NULL"
            ).fetchone()
        assert orphans == (0,)
    finally:
        stack.supervisor.stop()
        own.stop()


def test_a_window_over_max_csv_rows_fails_at_once_and_stores_nothing(
    seeded: Database, s3: S3Server
) -> None:
    stack = start_stack(seeded, s3, MAX_CSV_ROWS="100")
    try:
        reply = urllib3.request(
            "POST", stack.url("submit"), json={"date": "2024-03-05", "device_id": "phone1"}
        )
        job = stack.wait_finished(JobAccepted.model_validate_json(reply.data).job.job_id)
        assert job.status == "failed"
        assert job.attempts == 1  # refused, not retried: another attempt would read as many
        assert job.error_message is not None
        assert "points in the window exceed MAX_CSV_ROWS (100)" in job.error_message
        assert list(s3.client().list_objects(stack.bucket, recursive=True)) == []
    finally:
        stack.supervisor.stop()


def test_a_device_day_read_over_max_day_read_rows_fails_naming_limit_and_figures(
    seeded: Database, s3: S3Server
) -> None:
    # 30 s fixes: 2,880 in the day, and more in the context around it; the CSV limit holds.
    stack = start_stack(seeded, s3, MAX_DAY_READ_ROWS="2000", MAX_CSV_ROWS="5000")
    try:
        reply = urllib3.request(
            "POST", stack.url("submit"), json={"date": "2024-03-05", "device_id": "phone1"}
        )
        job = stack.wait_finished(JobAccepted.model_validate_json(reply.data).job.job_id)
        assert job.status == "failed"
        assert job.attempts == 1
        message = job.error_message or ""
        assert "exceed MAX_DAY_READ_ROWS (2000) per device-day" in message, message
        found = re.search(r"device phone1: (\d+) fixes to read for 1 day", message)
        assert found is not None, message
        assert int(found[1]) > 2880  # the day and its context, counted
        assert list(s3.client().list_objects(stack.bucket, recursive=True)) == []
    finally:
        stack.supervisor.stop()


def _get(stack: Stack, path: str) -> urllib3.BaseHTTPResponse:
    return urllib3.request("GET", f"{stack.url('status')}{path}", redirect=False, retries=False)


def _completed_job(stack: Stack) -> JobView:
    reply = urllib3.request(
        "POST", stack.url("submit"), json={"date": "2024-03-20", "device_id": "phone2"}
    )
    job = stack.wait_finished(JobAccepted.model_validate_json(reply.data).job.job_id)
    assert job.status == "completed"
    return job


def test_status_lists_jobs_newest_first_with_filters_and_counts(stack: Stack) -> None:
    for day in ("2024-03-21", "2024-03-22"):
        urllib3.request("POST", stack.url("submit"), json={"date": day, "device_id": "phone3"})
    everything = json.loads(_get(stack, "/jobs").data)
    assert everything["limit"] == 50
    assert everything["total_count"] >= len(everything["jobs"]) >= 2
    queued_at = [job["queued_at"] for job in everything["jobs"]]
    assert queued_at == sorted(queued_at, reverse=True)

    page = json.loads(_get(stack, "/jobs?device_id=phone3&limit=1&offset=1").data)
    assert page["limit"] == 1
    assert page["offset"] == 1
    assert len(page["jobs"]) == 1
    assert page["total_count"] >= 2
    assert {job["device_id"] for job in page["jobs"]} == {"phone3"}

    on_day = json.loads(_get(stack, "/jobs?date=2024-03-22").data)
    assert on_day["jobs"]
    for job in on_day["jobs"]:
        assert job["date"] <= "2024-03-22" <= job["end_date"]
    capped = json.loads(_get(stack, "/jobs?limit=100000").data)
    assert capped["limit"] == 500
    last = json.loads(_get(stack, "/jobs?offset=2147483647").data)
    assert (last["jobs"], last["offset"]) == ([], 2147483647)


@pytest.mark.parametrize(
    ("path", "status", "field"),
    [
        ("/jobs?limit=-1", 400, "limit"),
        ("/jobs?offset=-5", 400, "offset"),
        ("/jobs?limit=ten", 400, "limit"),
        ("/jobs?offset=9223372036854775808", 400, "offset: must be at most 2147483647"),
        ("/jobs?offset=2147483648", 400, "offset: must be at most 2147483647"),
        ("/jobs?limit=1_0", 400, "limit: '1_0' is not a whole number"),
        ("/jobs?offset=%2B5", 400, "offset: '+5' is not a whole number"),
        ("/jobs?limit=%D9%A3", 400, "limit: '\u0663' is not a whole number"),
        ("/jobs?device_id=bad%20id", 400, "device_id: must be 1-100 characters"),
        ("/jobs?status=done", 400, "status"),
        ("/jobs?date=2024-02-30", 400, "date"),
        ("/jobs?date=0001-01-01", 400, "date: 0001-01-01 is before 1970-01-01"),
        ("/jobs/not-a-uuid", 400, "job_id"),
        (f"/jobs/{uuid.UUID(int=1)}", 404, "job"),
        ("/download/distance_20240101_0000beef.csv", 404, "no CSV"),
        ("/nowhere", 404, "no such resource"),
    ],
)
def test_status_errors_are_json_naming_the_problem(
    stack: Stack, path: str, status: int, field: str
) -> None:
    response = _get(stack, path)
    assert response.status == status
    assert field in json.loads(response.data)["error"]


def test_status_refuses_methods_it_does_not_serve(stack: Stack) -> None:
    response = urllib3.request("DELETE", f"{stack.url('status')}/jobs", retries=False)
    assert response.status == 405
    assert "GET" in json.loads(response.data)["error"]
    assert response.headers["Allow"] == "GET, HEAD"


def test_downloads_redirect_to_fresh_presigned_urls_by_id_and_by_basename(stack: Stack) -> None:
    job = _completed_job(stack)
    assert job.csv_key is not None
    name = job.csv_key.rsplit("/", 1)[1]
    for path in (f"/download/{job.job_id}", f"/download/{name}"):
        response = _get(stack, path)
        assert response.status == 302
        location = response.headers["Location"]
        assert "X-Amz-Signature=" in location
        body = urllib3.request("GET", location).data
        assert body.startswith(b"timestamp,device_id,")
        assert len(body) == job.csv_bytes
    summary = _get(stack, f"/download/{job.job_id}/summary")
    assert summary.status == 302
    document = json.loads(urllib3.request("GET", summary.headers["Location"]).data)
    assert document["points"]["read"] == (job.result or {})["points"]["read"]
    # The tracks as GPX beside the CSV: linked from the job and downloadable, schema-valid.
    assert job.gpx is not None
    assert job.gpx.url.split("?")[0].endswith(".gpx")
    gpx = _get(stack, f"/download/{job.job_id}/gpx")
    assert gpx.status == 302
    track = urllib3.request("GET", gpx.headers["Location"]).data
    schema = etree.XMLSchema(etree.parse(str(GPX_SCHEMA)))
    assert schema.validate(etree.fromstring(track)), schema.error_log
    assert b"<otel:device>phone2</otel:device>" in track


def test_a_range_job_offers_no_gpx_link_and_its_gpx_download_says_why(stack: Stack) -> None:
    reply = urllib3.request(
        "POST",
        stack.url("submit"),
        json={"date": "2024-03-18", "end_date": "2024-03-19", "device_id": "phone2"},
    )
    job = stack.wait_finished(JobAccepted.model_validate_json(reply.data).job.job_id)
    assert job.status == "completed"
    assert job.csv is not None
    assert job.gpx is None
    response = _get(stack, f"/download/{job.job_id}/gpx")
    assert response.status == 404
    assert "one-day jobs" in json.loads(response.data)["error"]
    assert _get(stack, f"/download/{job.job_id}").status == 302


def test_download_of_an_unfinished_job_says_so(stack: Stack) -> None:
    with stack.db() as conn:
        store = JobStore(conn, config.JobSettings(), schema="otel_worker")
        request = JobRequest(
            date_from=dt.date(2024, 3, 25), date_to=dt.date(2024, 3, 25), timezone="UTC"
        )
        job, _ = store.create(request, idempotency_key=f"unfinished-{uuid.uuid4()}")
        claim = store.claim(job.id, "test-holder", lease_seconds=120)
        assert claim.job is not None
        assert claim.job.lease_token is not None
        try:
            response = _get(stack, f"/download/{job.id}")
            assert response.status == 409
            assert json.loads(response.data)["job_status"] == "processing"
        finally:
            store.fail(job.id, claim.job.lease_token, "ended by the test")


def test_otel_worker_dev_names_a_service_that_fails_to_start_in_one_line(
    seeded: Database, tmp_path: Path
) -> None:
    # No --local-s3 and no object-store keys: compute and status refuse their settings.
    env = {k: v for k, v in os.environ.items() if k not in config.variable_names()}
    run = subprocess.run(
        [str(Path(sys.executable).parent / "otel-worker"), "dev"],
        env=env | {"DATABASE_URL": seeded.dsn},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 3
    assert "Traceback" not in run.stdout + run.stderr
    (line,) = run.stderr.splitlines()
    assert line.startswith("otel-worker dev: ")
    assert "exited before it was ready" in line
    assert "invalid configuration: MINIO_ACCESS_KEY" in run.stdout


def test_otel_worker_dev_runs_everything_and_ctrl_c_stops_it_all(
    seeded: Database, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in config.variable_names()} | {
        "LOG_LEVEL": "INFO",
        "MINIO_BUCKET": "dev-cli",
    }
    # Settings from a `.env` where it is started reach every service, not only itself.
    (tmp_path / ".env").write_text(f"DATABASE_URL={seeded.dsn}\nMAX_RANGE_DAYS=2\n")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "otel-worker"),
            "dev",
            "--local-s3",
            str(tmp_path / "s3"),
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line)
        if "press Ctrl-C" in line:
            break
    urls = {
        parts[2]: parts[3]
        for line in lines
        if line.startswith("dev ") and len(parts := line.split()) == 4
    }
    assert {"submit", "compute", "status", "ingress", "broker"} <= set(urls)
    too_long = {"date": "2024-03-12", "end_date": "2024-03-14"}
    refused = urllib3.request("POST", urls["submit"], json=too_long)
    assert refused.status == 400
    assert "at most MAX_RANGE_DAYS (2)" in json.loads(refused.data)["error"]
    accepted = urllib3.request("POST", urls["submit"], json={"date": "2024-03-12"})
    assert accepted.status == 202
    job_id = JobAccepted.model_validate_json(accepted.data).job.job_id

    def done() -> bool:
        view = JobView.model_validate_json(
            urllib3.request("GET", f"{urls['status']}/jobs/{job_id}").data
        )
        return view.status == "completed"

    wait_until(done, 60, "the job via otel-worker dev")
    os.killpg(process.pid, signal.SIGINT)
    pressed = time.monotonic()
    rest, _ = process.communicate(timeout=90)
    assert process.returncode == 0, rest
    assert time.monotonic() - pressed < 5  # 2 s of grace, then killed (test_dev_terminal.py)
    assert rest.endswith("dev     | stopped\n"), rest[-300:]
    # Not a terminal: the services' log lines stay JSON.
    logged = [line.split(" | ", 1)[1] for line in lines if line.startswith("submit ")]
    assert logged
    assert json.loads(logged[0])["logger"] == "submit"
    prefixes = {line.split("|", 1)[0].strip() for line in lines + rest.splitlines() if "|" in line}
    assert {"submit", "compute", "status", "ingress", "broker", "dev"} <= prefixes
    for name in ("submit", "compute", "status"):
        with pytest.raises(OSError, match="Connection refused"):
            http_status(f"{urls[name]}/healthz")
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout == ""
