"""This project beside the database's own limit: the comparison table, on generated data.

Run with `make bench-compare` (or `python -m tests.bench.bench_compare --help`). For each
job of the table it seeds a database of its own on the server (BENCH_DATABASE_URL, else
TEST_DATABASE_URL, else postgres@127.0.0.1:5432) with generated tracks and the recommended
`(device_id, timestamp)` index, starts the whole system on it (every function a process,
PgBouncer in transaction pooling, SeaweedFS, the dev broker, status listening on a direct
connection), and then, `--runs` times, interleaved:

- the server's own `COPY (SELECT * FROM public.locations WHERE <the job's window>) TO
  '/dev/null'`: the rows the job needs, with no client at all: the limit;
- the job through the gRPC ingress as an old client runs it: CalculateDistanceFromHome, then
  GetJobStatus every 2 ms until it has finished (submit -> completed, as that client sees
  it), and the job's own `processing_time_ms` (claim -> completing commit);
- the same job asked with one waiting GetJobStatus (`wait_seconds`) instead of polling.

It prints medians, the ratio of processing to the COPY, and compute's peak RSS (VmHWM of
its gunicorn worker) after the jobs on each table. It asserts nothing. The machine is
shared with whatever else runs: compare the ratios of one run, and the pace lines, rather
than absolute figures across runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import grpc
import psycopg
from psycopg.conninfo import conninfo_to_dict

from shared.dev.tracks import TrackSpec
from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc
from tests.bench.bench_pipeline import children_rss, pace
from tests.bench.services import services
from tests.stack import start_stack

TIMEZONE = "America/New_York"
POLL_SECONDS = 0.002
"""The old client's polling interval."""


@dataclass(frozen=True)
class Case:
    """One row of the table: a job, and the data it runs on."""

    label: str
    date: dt.date
    end_date: dt.date
    device_id: str | None


@dataclass(frozen=True)
class Table:
    """A generated `public.locations` and the cases run against it."""

    name: str
    tracks: TrackSpec
    cases: tuple[Case, ...]


TWO_YEARS = TrackSpec(seed=21, start=dt.date(2023, 1, 2), days=730, devices=2)
MILLION = TrackSpec(seed=22, start=dt.date(2024, 6, 4), days=1, devices=3, interval_s=0.26)
SMALL = TrackSpec(seed=23, start=dt.date(2024, 3, 4), days=14, devices=2)
DAY = dt.date(2024, 3, 12)  # in the second year of TWO_YEARS
TABLES = (
    Table(
        "two years x 2 phones",
        TWO_YEARS,
        (
            Case("one device-day", DAY, DAY, "phone1"),
            Case("every device, same day", DAY, DAY, None),
            Case("31 days, every device", dt.date(2024, 1, 1), dt.date(2024, 1, 31), None),
        ),
    ),
    Table(
        "one day of ~1 M fixes, 3 phones",
        MILLION,
        (Case("every device, one day", MILLION.start, MILLION.start, None),),
    ),
    Table(
        "small, 14 days x 2 phones",
        SMALL,
        (Case("one device-day", dt.date(2024, 3, 12), dt.date(2024, 3, 12), "phone1"),),
    ),
)
FINISHED = {"completed", "failed", "cancelled"}


@dataclass
class Figures:
    """What `--runs` runs of one case measured, in seconds."""

    fixes: int = 0
    copy: list[float] = field(default_factory=list)
    polled: list[float] = field(default_factory=list)
    processing: list[float] = field(default_factory=list)
    waited: list[float] = field(default_factory=list)


def window(case: Case) -> tuple[dt.datetime, dt.datetime]:
    """The job's window: local midnight of its first day to that after its last."""
    zone = ZoneInfo(TIMEZONE)
    start = dt.datetime.combine(case.date, dt.time(), zone)
    end = dt.datetime.combine(case.end_date + dt.timedelta(days=1), dt.time(), zone)
    return start, end


def server_copy(
    conn: psycopg.Connection[tuple[object, ...]], case: Case, tracks: TrackSpec
) -> float:
    """Seconds the server takes to COPY the job's rows to nowhere (timed from here), each
    device's found by the recommended index, as the job finds them."""
    start, end = window(case)
    devices = (
        [case.device_id] if case.device_id else [f"phone{k + 1}" for k in range(tracks.devices)]
    )
    query = (
        "COPY (SELECT * FROM public.locations WHERE device_id = ANY(%(devices)s)"
        " AND timestamp >= %(start)s AND timestamp < %(end)s) TO '/dev/null'"
    )
    params = {"start": start, "end": end, "devices": devices}
    # COPY takes no bound parameters: let psycopg quote them into the text.
    text = psycopg.ClientCursor(conn).mogrify(query, params)
    begun = time.perf_counter()
    conn.execute(text.encode())
    return time.perf_counter() - begun


def request(case: Case) -> pb.CalculateDistanceRequest:
    return pb.CalculateDistanceRequest(
        date=case.date.isoformat(),
        end_date=case.end_date.isoformat() if case.end_date != case.date else "",
        device_id=case.device_id or "",
        timezone=TIMEZONE,
        idempotency_key=f"bench-{uuid.uuid4()}",
    )


Follow = Callable[[str], pb.GetJobStatusResponse]
"""Follows a job by id to its end; the last answer."""


def run_job(
    stub: distance_pb2_grpc.DistanceServiceStub,
    case: Case,
    follow: Follow,
) -> tuple[float, pb.GetJobStatusResponse]:
    """Submit `case` and `follow` it to its end; (seconds submit -> seen finished, answer)."""
    begun = time.perf_counter()
    job_id = stub.CalculateDistanceFromHome(request(case), timeout=30).job_id
    answer = follow(job_id)
    elapsed = time.perf_counter() - begun
    if answer.status != "completed":
        raise SystemExit(f"{case.label}: job {job_id} {answer.status}: {answer.error_message}")
    return elapsed, answer


def polling(stub: distance_pb2_grpc.DistanceServiceStub) -> Follow:
    """How an old client follows a job: GetJobStatus every POLL_SECONDS."""

    def follow(job_id: str) -> pb.GetJobStatusResponse:
        while True:
            answer: pb.GetJobStatusResponse = stub.GetJobStatus(
                pb.GetJobStatusRequest(job_id=job_id), timeout=30
            )
            if answer.status in FINISHED:
                return answer
            time.sleep(POLL_SECONDS)

    return follow


def waiting(stub: distance_pb2_grpc.DistanceServiceStub) -> Follow:
    """How a new client follows a job: one GetJobStatus that waits for the finish."""

    def follow(job_id: str) -> pb.GetJobStatusResponse:
        while True:
            answer: pb.GetJobStatusResponse = stub.GetJobStatus(
                pb.GetJobStatusRequest(job_id=job_id, wait_seconds=10), timeout=30
            )
            if answer.status in FINISHED:
                return answer

    return follow


def measure_table(admin: str, table: Table, runs: int) -> list[tuple[Case, Figures, int]]:
    """Seed `table`, start the system on it and measure its cases; (case, figures, compute
    peak RSS in kB after them)."""
    measured: list[tuple[Case, Figures]] = []
    with services(admin, table.tracks) as (database, direct, s3):
        parts = conninfo_to_dict(direct)
        listen = (
            f"postgresql://{parts.get('user', 'postgres')}@{parts.get('host', '127.0.0.1')}:"
            f"{parts.get('port', 5432)}/{parts['dbname']}"
        )
        stack = start_stack(
            database,
            s3,
            time_scale=1.0,
            DATABASE_LISTEN_URL=listen,
            # The 1 M-fix day is above the everyday bounds, on purpose.
            MAX_DAY_READ_ROWS="2000000",
            MAX_CSV_ROWS="2000000",
            MAX_CSV_BYTES="1000000000",
            JOB_LEASE_SECONDS="300",
            LOG_LEVEL="WARNING",
        )
        try:
            with (
                psycopg.connect(direct, autocommit=True) as conn,
                grpc.insecure_channel(stack.url("ingress")) as channel,
            ):
                stub = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]
                for case in table.cases:
                    figures = Figures()
                    run_job(stub, case, polling(stub))  # warm-up: imports, pools, caches
                    server_copy(conn, case, table.tracks)
                    for _ in range(runs):
                        figures.copy.append(server_copy(conn, case, table.tracks))
                        elapsed, answer = run_job(stub, case, polling(stub))
                        figures.polled.append(elapsed)
                        figures.processing.append(answer.result.processing_time_ms / 1000)
                        figures.fixes = answer.result.total_locations
                        figures.waited.append(run_job(stub, case, waiting(stub))[0])
                    measured.append((case, figures))
            compute = stack.supervisor.services["compute"]
            assert compute.process is not None
            rss = children_rss(compute.process.pid)
        finally:
            stack.supervisor.stop()
    return [(case, figures, rss) for case, figures in measured]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def print_table(rows: list[tuple[Table, Case, Figures, int]], runs: int) -> None:
    print()
    print(f"medians of {runs} runs; processing = the job's processing_time_ms")
    print()
    print(
        "| job | fixes | the server's own COPY | old client polling every 2 ms, submit -> "
        "completed (processing) | processing / COPY | one waiting GetJobStatus, submit -> "
        "completed | compute peak RSS |"
    )
    print("|---|---|---|---|---|---|---|")
    for table, case, figures, rss in rows:
        copy = statistics.median(figures.copy)
        processing = statistics.median(figures.processing)
        polled, waited = statistics.median(figures.polled), statistics.median(figures.waited)
        print(
            f"| {case.label}, {table.name} | {figures.fixes:,} | {ms(copy)} | "
            f"{ms(polled)} ({ms(processing)}) | {processing / copy:.1f}x | {ms(waited)} | "
            f"{rss / 1024:.0f} MB |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="runs of each case (medians)")
    parser.add_argument(
        "--tables",
        nargs="+",
        choices=("two-years", "million", "small"),
        default=["two-years", "million", "small"],
        help="which generated tables to measure on",
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    admin = os.environ.get("BENCH_DATABASE_URL") or os.environ.get(
        "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    chosen = {"two-years": TABLES[0], "million": TABLES[1], "small": TABLES[2]}
    print(f"machine: {os.cpu_count()} cores, shared; every service a separate process on it")
    print(f"pace at the start: {pace()}")
    rows: list[tuple[Table, Case, Figures, int]] = []
    for name in args.tables:
        table = chosen[name]
        for case, figures, rss in measure_table(admin, table, args.runs):
            rows.append((table, case, figures, rss))
    print(f"pace at the end: {pace()}")
    print_table(rows, args.runs)


if __name__ == "__main__":
    main()
