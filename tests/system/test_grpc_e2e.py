"""The gRPC ingress against the real stack: old clients keep working, every error has its
code, repeated keys make one job, and the command-line client shows what a user needs."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import urllib3
from grpc_tools import protoc

from shared.cli import main as cli_main
from shared.config import ClientSettings
from shared.dev.stack import REPO_ROOT, free_ports
from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc
from shared.tools import client
from tests.stack import Stack

LEGACY = Path(__file__).parents[1] / "legacy"


@pytest.fixture
def stub(stack: Stack) -> Iterator[distance_pb2_grpc.DistanceServiceStub]:
    with grpc.insecure_channel(stack.url("ingress")) as channel:
        yield distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]


def _code(call: object) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code().name, info.value.details() or ""


def test_a_client_built_from_the_original_proto_still_works(stack: Stack, tmp_path: Path) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    generated = protoc.main(
        [
            "protoc",
            f"-I{LEGACY}",
            f"-I{include}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            "distance/v1/distance.proto",
        ]
    )
    assert generated == 0
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run(
        [
            sys.executable,
            str(LEGACY / "old_client.py"),
            stack.url("ingress"),
            "2024-03-12",
            "phone3",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seen = json.loads(run.stdout)
    assert seen["queued_status"] == "queued"
    assert seen["queued_at"] > 0
    assert seen["status"] == "completed", seen["error"]
    assert seen["completed_at"] >= seen["queued_at"]
    assert seen["date"] == "2024-03-12"
    assert seen["device_id"] == "phone3"
    assert seen["total_locations"] > 2000
    assert 0 < seen["total_distance_km"] < 500
    assert seen["min_distance_km"] <= seen["max_distance_km"]
    assert seen["processing_time_ms"] > 0
    name = Path(seen["csv_path"]).name
    assert name.startswith("distance_20240312_phone3_")
    assert name.endswith(".csv")
    # The basename is what old clients link to: status serves it.
    assert seen["job_id"][:8] in name
    assert seen["job_id"] in seen["listed"]
    assert seen["limit"] == 50
    assert seen["total_count"] >= len(seen["listed"])
    assert seen["bad_date_code"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"date": "2024-02-30"}, "date"),
        ({"date": "03/12/2024"}, "date"),
        ({"date": ""}, "date"),
        ({"date": "2024-03-12", "end_date": "2024-03-01"}, "end_date"),
        ({"date": "2023-01-01", "end_date": "2024-06-01"}, "end_date"),
        ({"date": "2024-03-12", "device_id": "no spaces please"}, "device_id"),
        ({"date": "2024-03-12", "timezone": "Mars/Olympus"}, "timezone"),
        ({"date": "2099-01-01"}, "date"),
        ({"date": "0001-01-01"}, "date"),
        ({"date": "2024-03-12", "timezone": "localtime"}, "timezone"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_field(
    stub: distance_pb2_grpc.DistanceServiceStub, request_fields: dict[str, str], field: str
) -> None:
    code, details = _code(
        lambda: stub.CalculateDistanceFromHome(
            pb.CalculateDistanceRequest(**request_fields), timeout=10
        )
    )
    assert code == "INVALID_ARGUMENT"
    assert details.startswith(f"{field}:"), details


def test_lookups_have_their_codes(stub: distance_pb2_grpc.DistanceServiceStub) -> None:
    unknown = str(uuid.uuid4())
    assert (
        _code(lambda: stub.GetJobStatus(pb.GetJobStatusRequest(job_id=unknown), timeout=10))[0]
        == "NOT_FOUND"
    )
    assert (
        _code(lambda: stub.GetJobStatus(pb.GetJobStatusRequest(job_id="42"), timeout=10))[0]
        == "INVALID_ARGUMENT"
    )
    for bad in (
        pb.ListJobsRequest(limit=-1),
        pb.ListJobsRequest(offset=-1),
        pb.ListJobsRequest(date="soon"),
        pb.ListJobsRequest(status="done"),
    ):
        assert _code(lambda bad=bad: stub.ListJobs(bad, timeout=10))[0] == "INVALID_ARGUMENT"
    assert stub.ListJobs(pb.ListJobsRequest(limit=0), timeout=10).limit == 50
    assert stub.ListJobs(pb.ListJobsRequest(limit=9999), timeout=10).limit == 500


def test_fifty_concurrent_calls_with_one_key_make_one_job(
    stub: distance_pb2_grpc.DistanceServiceStub,
) -> None:
    key = f"dashboard-{uuid.uuid4()}"
    barrier = threading.Barrier(50)
    replies: list[pb.CalculateDistanceResponse] = []
    errors: list[BaseException] = []

    def call() -> None:
        barrier.wait()
        try:
            replies.append(
                stub.CalculateDistanceFromHome(
                    pb.CalculateDistanceRequest(
                        date="2024-03-18", device_id="phone1", idempotency_key=key
                    ),
                    timeout=30,
                )
            )
        except grpc.RpcError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({r.job_id for r in replies}) == 1
    assert sum(r.created for r in replies) == 1


def test_an_empty_day_completes_with_zeros_and_a_note(
    stack: Stack, stub: distance_pb2_grpc.DistanceServiceStub
) -> None:
    queued = stub.CalculateDistanceFromHome(
        pb.CalculateDistanceRequest(date="2023-01-15"), timeout=10
    )
    job = stack.wait_finished(queued.job_id)
    assert job.status == "completed"
    reply = stub.GetJobStatus(pb.GetJobStatusRequest(job_id=queued.job_id), timeout=10)
    assert reply.result.total_locations == 0
    assert reply.result.total_distance_km == 0
    assert reply.result.notes
    assert reply.result.csv_url


def test_a_device_without_any_fix_is_named_in_a_note_with_the_known_ones(
    stack: Stack, stub: distance_pb2_grpc.DistanceServiceStub
) -> None:
    note = (
        "device 'phon1' has no fixes at all in public.locations; "
        "devices with fixes: phone1, phone2, phone3"
    )
    submit = _otel_worker(stack, "submit", "--date", "2024-03-19", "--device", "phon1", "--wait")
    assert submit.returncode == 0, submit.stderr
    assert f"Note          {note}\n" in submit.stdout
    job_id = submit.stdout.split()[1]
    status = _otel_worker(stack, "status", job_id)
    assert f"note      {note}\n" in status.stdout, status.stdout
    reply = stub.GetJobStatus(pb.GetJobStatusRequest(job_id=job_id), timeout=10)
    assert note in reply.result.notes
    summary = urllib3.request("GET", reply.result.summary_url)
    assert summary.status == 200
    assert note in summary.json()["notes"]
    # A known device on a day without fixes: an empty day, nothing about the device.
    queued = stub.CalculateDistanceFromHome(
        pb.CalculateDistanceRequest(date="2023-01-16", device_id="phone1"), timeout=10
    )
    assert stack.wait_finished(queued.job_id).status == "completed"
    quiet = stub.GetJobStatus(pb.GetJobStatusRequest(job_id=queued.job_id), timeout=10)
    assert list(quiet.result.notes) == ["no fixes in the window: every metric is zero"]


def test_new_clients_get_every_metric(
    stack: Stack, stub: distance_pb2_grpc.DistanceServiceStub
) -> None:
    queued = stub.CalculateDistanceFromHome(
        pb.CalculateDistanceRequest(
            date="2024-03-11", end_date="2024-03-13", timezone="America/New_York"
        ),
        timeout=10,
    )
    stack.wait_finished(queued.job_id)
    reply = stub.GetJobStatus(pb.GetJobStatusRequest(job_id=queued.job_id), timeout=10)
    result = reply.result
    assert reply.end_date == "2024-03-13"
    assert result.csv_url.startswith("http://")
    assert result.summary_url
    assert result.csv_url_expires_at.ToDatetime(dt.UTC) > dt.datetime.now(dt.UTC)
    metrics = result.metrics
    assert metrics.points_read == result.total_locations
    assert metrics.path_km == pytest.approx(result.total_distance_km)
    assert metrics.raw_path_km >= metrics.path_km
    assert set(metrics.points_dropped) == {"invalid", "accuracy", "duplicate", "jump", "jitter"}
    assert metrics.time_at_home_s + metrics.time_away_s + metrics.time_unknown_s > 0
    assert len(metrics.trips) >= 3
    assert {d.device_id for d in result.devices} == {"phone1", "phone2", "phone3"}
    assert sum(d.metrics.path_km for d in result.devices) == pytest.approx(metrics.path_km)
    assert 0 < metrics.completeness.coverage <= 1
    # Stays, time per place and each device's timeline, whole: three days of three devices.
    assert metrics.stays
    assert {visit.place for visit in metrics.places} >= {"home"}
    assert sum(e.duration_s for e in metrics.timeline) == pytest.approx(3 * 3 * 86400, abs=0.1)


def _otel_worker(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    """The installed `otel-worker` command, run against the stack's ingress."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "otel-worker"), *argv],
        env={**os.environ, "INGRESS_ADDRESS": stack.url("ingress")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
    )


def test_the_command_line_client_follows_a_job_to_its_table_and_link(stack: Stack) -> None:
    submit = _otel_worker(stack, "submit", "--date", "2024-03-19", "--device", "phone2", "--wait")
    assert submit.returncode == 0, submit.stderr
    out = submit.stdout
    assert re.match(r"job [0-9a-f-]{36} queued\n", out), out
    for heading in ("Window", "Fixes", "Path", "From home", "Time", "Trips", "Devices", "CSV"):
        assert heading in out, heading
    assert "completed" in submit.stderr
    job_id = out.split()[1]
    status = _otel_worker(stack, "status", job_id)
    assert (status.returncode, "completed" in status.stdout) == (0, True), status.stderr
    listing = _otel_worker(stack, "jobs", "--device", "phone2")
    assert (listing.returncode, job_id in listing.stdout) == (0, True), listing.stderr
    again = _otel_worker(stack, "submit", "--date", "2024-03-19", "--key", f"again-{job_id}")
    repeat = _otel_worker(stack, "submit", "--date", "2024-03-19", "--key", f"again-{job_id}")
    first_id = again.stdout.split()[1]
    assert repeat.stdout.startswith(f"job {first_id} already exists ("), repeat.stdout
    empty = _otel_worker(stack, "jobs", "--device", "nobody-has-this")
    assert (empty.returncode, empty.stdout) == (0, "no jobs match\n")
    past = _otel_worker(stack, "jobs", "--device", "phone2", "--offset", "100000")
    assert past.stdout.startswith("no jobs on this page: "), past.stdout
    bad = _otel_worker(stack, "status", "not-a-job")
    assert bad.returncode == 3
    assert "INVALID_ARGUMENT" in bad.stderr


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_waiting_rewrites_one_progress_line(stack: Stack) -> None:
    screen = Terminal()
    request = pb.CalculateDistanceRequest(
        date="2024-03-20", device_id="phone1", idempotency_key=f"tty-{uuid.uuid4()}"
    )
    settings = ClientSettings(ingress_address=stack.url("ingress"))
    code = client.submit(settings, request, wait_for_it=True, out=io.StringIO(), err=screen)
    assert code == 0
    line = screen.getvalue()
    assert line.startswith("\r")
    assert line.count("\n") == 1
    assert line.endswith("\n")
    assert line.split("\r")[-1].startswith("completed, attempt 1/")


def test_status_says_whether_a_failed_job_was_retried(stack: Stack) -> None:
    reply = urllib3.request(
        "POST", stack.url("submit"), json={"date": "2024-03-22", "device_id": "phone1"}
    )
    job_id = reply.json()["job"]["job_id"]
    stack.wait_finished(job_id)
    for attempts, expected in (
        (1, "(attempt 1 of 3; not retried)"),
        (3, "(attempt 3 of 3, the last)"),
    ):
        with stack.db() as conn:
            conn.execute(
                "UPDATE otel_worker.jobs SET status = 'failed', attempts = %s, max_attempts = 3,"
                " error_message = 'boom' WHERE id = %s",
                (attempts, job_id),
            )
        status = _otel_worker(stack, "status", job_id)
        assert f"status    failed {expected}" in status.stdout, status.stdout


def test_waiting_gives_up_after_its_timeout_with_exit_4(stack: Stack) -> None:
    compute = stack.supervisor.services["compute"]
    compute.stop()  # nothing takes the job: it stays queued
    try:
        begun = time.monotonic()
        submit = _otel_worker(
            stack, "submit", "--date", "2024-03-21", "--device", "phone3", "--wait",
            "--key", f"timeout-{uuid.uuid4()}", "--timeout", "1.5",
        )  # fmt: skip
        elapsed = time.monotonic() - begun
    finally:
        stack.supervisor.restart("compute")
    assert submit.returncode == 4, submit.stderr
    # Not a terminal: one line per state, not one per poll run together.
    assert [line.split(",")[0] for line in submit.stderr.splitlines()] == ["queued"]
    job_id = submit.stdout.split()[1]
    assert f"job {job_id} is still queued after 1.5 s" in submit.stdout
    assert f"otel-worker status {job_id}" in submit.stdout
    assert 1.5 <= elapsed < 30
    stack.wait_finished(job_id)  # and the job is not lost: compute takes it once back


def test_a_summary_out_of_reach_still_prints_the_result_line() -> None:
    (port,) = free_ports(1)
    reply = pb.GetJobStatusResponse(
        status="completed",
        result=pb.JobResult(
            total_distance_km=12.5,
            total_locations=321,
            summary_url=f"http://127.0.0.1:{port}/bucket/job.summary.json",
            csv_url=f"http://127.0.0.1:{port}/bucket/job.csv",
            notes=["device 'x' has no fixes at all"],
        ),
    )
    out = io.StringIO()
    client.show_result(reply, out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("(the summary could not be downloaded: ")
    assert lines[1] == "path 12.500 km, 321 fixes"
    assert lines[2] == "Note          device 'x' has no fixes at all"
    assert lines[3].endswith(f"http://127.0.0.1:{port}/bucket/job.csv")


def test_the_wait_timeout_must_be_a_positive_number(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(SystemExit) as exited:
            cli_main(["submit", "--date", "2024-03-01", "--wait", "--timeout", bad])
        assert exited.value.code == 2
        assert "--timeout: expected a positive number of seconds" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--limit", "--offset"])
def test_list_bounds_are_usage_errors(capsys: pytest.CaptureFixture[str], option: str) -> None:
    # ListJobs carries them as int32; the server refuses negatives.
    for bad in ("3000000000", "2147483648", "-1", "ten"):
        with pytest.raises(SystemExit) as exited:
            cli_main(["jobs", option, bad, "--ingress", "127.0.0.1:1"])
        assert exited.value.code == 2
        assert f"argument {option}: expected a whole number 0 to 2147483647" in (
            capsys.readouterr().err
        )
