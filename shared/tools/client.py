"""`otel-worker submit | status | jobs`: a gRPC client of the ingress, for people.

`submit --wait` shows progress while the job runs, then the summary table (the same one
`analyze` prints, from the job's JSON summary) and the CSV link.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import grpc
from google.protobuf.json_format import MessageToDict

from shared.config import ClientSettings
from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc

FINISHED = {"completed", "failed", "cancelled"}
EXIT_FAILED = 1
EXIT_RPC = 3
EXIT_STILL_RUNNING = 4


class Client:
    """A DistanceService stub with the bearer token and a deadline on every call."""

    def __init__(self, settings: ClientSettings, channel: grpc.Channel) -> None:
        self.stub = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]
        token = settings.grpc_auth_token
        self.metadata = (("authorization", f"Bearer {token.get_secret_value()}"),) if token else ()
        self.timeout = settings.client_timeout_seconds

    def calculate(self, request: pb.CalculateDistanceRequest) -> pb.CalculateDistanceResponse:
        """CalculateDistanceFromHome."""
        reply: pb.CalculateDistanceResponse = self.stub.CalculateDistanceFromHome(
            request, timeout=self.timeout, metadata=self.metadata
        )
        return reply

    def status(self, job_id: str, wait_seconds: float = 0.0) -> pb.GetJobStatusResponse:
        """GetJobStatus; with `wait_seconds`, answered once the job has finished or after
        that long (the call's deadline grows by as much)."""
        reply: pb.GetJobStatusResponse = self.stub.GetJobStatus(
            pb.GetJobStatusRequest(job_id=job_id, wait_seconds=wait_seconds),
            timeout=self.timeout + wait_seconds,
            metadata=self.metadata,
        )
        return reply

    def cancel(self, job_id: str) -> pb.GetJobStatusResponse:
        """CancelJob."""
        reply: pb.GetJobStatusResponse = self.stub.CancelJob(
            pb.CancelJobRequest(job_id=job_id), timeout=self.timeout, metadata=self.metadata
        )
        return reply

    def jobs(self, request: pb.ListJobsRequest) -> pb.ListJobsResponse:
        """ListJobs."""
        reply: pb.ListJobsResponse = self.stub.ListJobs(
            request, timeout=self.timeout, metadata=self.metadata
        )
        return reply


@contextmanager
def connected(settings: ClientSettings) -> Iterator[Client]:
    """A client on a channel to INGRESS_ADDRESS (over TLS with INGRESS_TLS or a CA file),
    closed afterwards."""
    ca_file = settings.ingress_ca_file
    if settings.ingress_tls or ca_file is not None:
        roots = ca_file.read_bytes() if ca_file is not None else None
        credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        channel = grpc.secure_channel(settings.ingress_address, credentials)
    else:
        channel = grpc.insecure_channel(settings.ingress_address)
    with channel:
        yield Client(settings, channel)


def _when(stamp: object) -> str:
    if not getattr(stamp, "seconds", 0):
        return "-"
    moment: dt.datetime = stamp.ToDatetime(dt.UTC)  # type: ignore[attr-defined]
    return moment.astimezone().isoformat(timespec="seconds")


WAIT_STEP_SECONDS = 10.0
"""The longest single wait asked of the server: below its default MAX_WAIT_SECONDS, so
the elapsed time shown moves at least this often while a job runs."""


def wait(
    client: Client, job_id: str, err: TextIO, timeout: float, interval: float = 0.5
) -> pb.GetJobStatusResponse:
    """Follow the job until it finishes or `timeout` seconds pass, showing its state and
    the elapsed time on `err` (one line rewritten on a terminal; elsewhere, such as a log,
    a line per change of state); the last answer either way.

    Each GetJobStatus waits on the server for the finish (`wait_seconds`), so the outcome
    shows the moment it is committed. An answer sooner than `interval` without a finish (a
    server that does not wait, or one whose wait slots are all taken) is followed by a
    pause, so the calls never come faster than one per `interval`."""
    live = err.isatty()
    started = time.monotonic()
    shown = ""
    while True:
        asked = time.monotonic()
        # The first answer at once (the state shows), then waits on the server.
        step = min(WAIT_STEP_SECONDS if shown else 0.0, max(0.0, timeout - (asked - started)))
        try:
            reply = client.status(job_id, wait_seconds=step)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            reply = client.status(job_id)  # every wait slot taken: ask without waiting
        elapsed = time.monotonic() - started
        attempt = f", attempt {reply.attempts}/{reply.max_attempts}" if reply.attempts else ""
        state = f"{reply.status}{attempt}"
        if live:
            err.write(f"\r{state}, {elapsed:.1f} s ")
        elif state != shown:
            err.write(f"{state}, {elapsed:.1f} s\n")
        shown = state
        err.flush()
        if reply.status in FINISHED or elapsed >= timeout:
            if live:
                err.write("\n")
            return reply
        pause = interval - (time.monotonic() - asked)
        time.sleep(min(max(pause, 0.0), max(0.0, timeout - elapsed)))


def show_result(reply: pb.GetJobStatusResponse, out: TextIO) -> None:
    """The summary table of a completed job and where to download its CSV."""
    from shared.engine import Summary
    from shared.tools.analyze import write_table

    result = reply.result
    summary = None
    if result.summary_url:
        try:
            with urllib.request.urlopen(result.summary_url, timeout=30) as response:  # noqa: S310
                summary = Summary.model_validate_json(response.read())
        except OSError as exc:  # the object store's public endpoint, out of reach from here
            out.write(f"(the summary could not be downloaded: {exc})\n")
    if summary is not None:
        write_table(summary, out)
    else:
        out.write(f"path {result.total_distance_km:.3f} km, {result.total_locations} fixes\n")
        out.write("".join(f"Note          {note}\n" for note in result.notes))
    out.write(f"CSV           {result.csv_url or result.csv_path}\n")
    if result.csv_url:
        out.write(f"              (link valid until {_when(result.csv_url_expires_at)})\n")


def submit(
    settings: ClientSettings,
    request: pb.CalculateDistanceRequest,
    *,
    wait_for_it: bool,
    wait_seconds: float = 600.0,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Queue a job and print its id; with `wait_for_it`, follow it to the end (for at most
    `wait_seconds`)."""
    with connected(settings) as client:
        reply = client.calculate(request)
        if reply.created:
            out.write(f"job {reply.job_id} queued\n")
        else:
            out.write(f"job {reply.job_id} already exists ({reply.status})\n")
        if not wait_for_it:
            return 0
        final = wait(client, reply.job_id, err, wait_seconds)
        if final.status not in FINISHED:
            out.write(
                f"job {reply.job_id} is still {final.status} after {wait_seconds:g} s; "
                f"follow it with `otel-worker status {reply.job_id}`\n"
            )
            return EXIT_STILL_RUNNING
        if final.status in {"failed", "cancelled"}:
            out.write(f"{final.status}: {final.error_message}\n")
            return EXIT_FAILED
        show_result(final, out)
    return 0


def status(settings: ClientSettings, job_id: str, as_json: bool, out: TextIO = sys.stdout) -> int:
    """Print one job."""
    with connected(settings) as client:
        reply = client.status(job_id)
    if as_json:
        out.write(json.dumps(MessageToDict(reply), indent=2) + "\n")
        return 0
    days = reply.date if reply.end_date in {"", reply.date} else f"{reply.date} to {reply.end_date}"
    attempts = f"attempt {reply.attempts} of {reply.max_attempts}"
    if reply.status == "failed":
        # A failure before the last attempt is one that would only repeat (bad data, limits).
        attempts += "; not retried" if reply.attempts < reply.max_attempts else ", the last"
    out.write(
        f"job       {reply.job_id}\nstatus    {reply.status} ({attempts})\n"
        f"days      {days} ({reply.timezone}), device {reply.device_id or 'all'}\n"
        f"queued    {_when(reply.queued_at)}\nstarted   {_when(reply.started_at)}\n"
        f"finished  {_when(reply.completed_at)}\n"
    )
    if reply.error_message:
        out.write(f"error     {reply.error_message}\n")
    if reply.superseded_by:
        out.write(f"superseded by {reply.superseded_by} (late fixes moved its figures)\n")
    if reply.supersedes:
        out.write(f"supersedes {reply.supersedes}\n")
    if reply.status == "completed":
        result = reply.result
        out.write(
            f"path      {result.total_distance_km:.3f} km from {result.total_locations} fixes, "
            f"max {result.max_distance_km:.3f} km from home\n"
            f"CSV       {result.csv_url or result.csv_path}\n"
        )
        out.write("".join(f"note      {note}\n" for note in result.notes))
    return 0


def cancel(settings: ClientSettings, job_id: str, out: TextIO = sys.stdout) -> int:
    """Cancel a queued or processing job and say so (a finished one is FAILED_PRECONDITION,
    raised as the RpcError the command reports)."""
    with connected(settings) as client:
        reply = client.cancel(job_id)
    out.write(f"job {reply.job_id} {reply.status}\n")
    return 0


def jobs(settings: ClientSettings, request: pb.ListJobsRequest, out: TextIO = sys.stdout) -> int:
    """Print a page of jobs, newest first."""
    with connected(settings) as client:
        reply = client.jobs(request)
    if not reply.jobs:
        out.write(
            f"no jobs on this page: {reply.total_count} match, from offset {reply.offset}\n"
            if reply.total_count
            else "no jobs match\n"
        )
        return 0
    out.write(f"{'job':<36}  {'status':<10}  {'days':<23}  {'device':<16}  queued\n")
    for job in reply.jobs:
        days = job.date if job.end_date in {"", job.date} else f"{job.date}..{job.end_date}"
        out.write(
            f"{job.job_id:<36}  {job.status:<10}  {days:<23}  {job.device_id or 'all':<16}  "
            f"{_when(job.queued_at)}\n"
        )
    out.write(f"{reply.offset + 1}-{reply.offset + len(reply.jobs)} of {reply.total_count}\n")
    return 0
