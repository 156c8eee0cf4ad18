"""Benchmark of the whole system: every function a process, real PostgreSQL (through
PgBouncer), SeaweedFS as S3, the dev broker. Run with `make bench-pipeline`.

Prints, for the issue targets:
  - one-day job (~3,000 fixes), warm, submit -> completed: p50 / p95;
  - a 31-day, 3-device range: end to end, and the compute worker's peak RSS;
  - CalculateDistanceFromHome alone (compute stopped): calls/s sustained, latency;
  - the whole pipeline, in rounds: one-day jobs/s submitted and completed, and the CPU
    each process (service, database, PgBouncer, S3 server, this process with the dev
    broker) spent per job;
  - GetJobStatus latency while the pipeline runs at half the rounds' median rate, probed
    from a process of its own two ways: back to back from 2 threads (the most the probe
    can load the machine) and paced at STATUS_PACE calls/s (clients polling their jobs);
  - ingress process start -> health SERVING, and -> its first completed job.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import multiprocessing
import os
import statistics
import subprocess
import threading
import time
import timeit
import uuid
from collections.abc import Callable, Iterator
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import grpc
import psycopg
import urllib3

from shared.dev.stack import free_ports, grpc_serving, ingress_process
from shared.dev.tracks import TrackSpec
from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc
from tests.bench.services import services
from tests.stack import Stack, start_stack

SPEC = TrackSpec(seed=11, start=dt.date(2024, 1, 1), days=62, devices=3)
DAYS = [SPEC.start + dt.timedelta(days=k) for k in range(SPEC.days)]
DEVICES = ("phone1", "phone2", "phone3")
STATUS_PACE = 50.0
PHASES = ("claim", "plan", "read", "engine", "csv", "uploads", "complete")
"""A one-day job's phases, as compute records them."""
"""GetJobStatus calls/s of the paced probe: clients polling the jobs in flight."""


def pace() -> str:
    """How fast this machine runs plain Python right now: the same pipeline ran twice as
    slow on the same machine on different days, so compare runs by this too."""
    best = min(timeit.repeat("sum(range(1_000_000))", number=1, repeat=5))
    return f"sum(range(1_000_000)) best of 5 took {best * 1000:.1f} ms"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


class Jobs:
    """Reads job state straight from the jobs table (no load on status while timing)."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)

    def finished(
        self, job_ids: list[str], timeout: float, interval: float = 0.1
    ) -> dict[str, dt.datetime]:
        """Each job's completed_at once all have completed. Callers time jobs by those
        stamps, not by when this noticed, so it polls slowly: a busy poll would load the
        database it measures."""
        deadline = time.monotonic() + timeout
        done: dict[str, dt.datetime] = {}
        while len(done) < len(job_ids) and time.monotonic() < deadline:
            rows = self.conn.execute(
                "SELECT id::text, completed_at FROM otel_worker.jobs"
                " WHERE id = ANY(%s::uuid[]) AND status = 'completed'",
                ([j for j in job_ids if j not in done],),
            ).fetchall()
            done.update({row[0]: row[1] for row in rows})
            time.sleep(interval)
        missing = len(job_ids) - len(done)
        if missing:
            raise RuntimeError(f"{missing} job(s) did not complete within {timeout:.0f} s")
        return done

    def phases(self, job_ids: list[str]) -> str:
        """The jobs' median processing time (claim -> completing statement) and the
        median of each phase compute recorded (`timings_ms`), as one line."""
        rows = self.conn.execute(
            "SELECT extract(epoch FROM completed_at - started_at)::float8,"
            " result->'timings_ms' FROM otel_worker.jobs WHERE id = ANY(%s::uuid[])",
            (job_ids,),
        ).fetchall()
        line = f"processing p50 {ms(statistics.median(row[0] for row in rows))}"
        timed = [row[1] for row in rows if row[1]]
        if timed:
            line += "; phases p50 (ms): " + ", ".join(
                f"{name} {statistics.median(t.get(name, 0.0) for t in timed):.1f}"
                for name in PHASES
            )
        return line


def one_day_latency(stack: Stack, jobs: Jobs, count: int) -> None:
    http = urllib3.PoolManager()
    latencies = []
    job_ids = []
    for day, device in itertools.islice(itertools.product(DAYS[31:], DEVICES), count):
        started = dt.datetime.now(dt.UTC)
        reply = http.request(
            "POST", stack.url("submit"), json={"date": day.isoformat(), "device_id": device}
        )
        job_id = reply.json()["job"]["job_id"]
        completed = jobs.finished([job_id], 60)[job_id]
        latencies.append((completed - started).total_seconds())
        job_ids.append(job_id)
    print(
        f"one-day job, warm, submit -> completed ({count} jobs, ~2,900 fixes each): "
        f"p50 {ms(statistics.median(latencies))}, p95 {ms(percentile(latencies, 95))}, "
        f"best {ms(min(latencies))}"
    )
    print(f"  {jobs.phases(job_ids)}")


def children_rss(pid: int) -> int:
    """Peak RSS (VmHWM, kB) of the gunicorn workers under `pid`."""
    peak = 0
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        for line in Path(f"/proc/{child}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    return peak


def month_range(stack: Stack, jobs: Jobs) -> None:
    compute = stack.supervisor.services["compute"]
    assert compute.process is not None
    before = children_rss(compute.process.pid)
    started = dt.datetime.now(dt.UTC)
    reply = urllib3.request(
        "POST", stack.url("submit"), json={"date": "2024-01-01", "end_date": "2024-01-31"}
    )
    job_id = reply.json()["job"]["job_id"]
    completed = jobs.finished([job_id], 120)[job_id]
    view = urllib3.request("GET", f"{stack.url('status')}/jobs/{job_id}").json()
    points = view["result"]["points"]["read"]
    after = children_rss(compute.process.pid)
    print(
        f"31-day, 3-device range ({points:,} fixes): {(completed - started).total_seconds():.2f} s "
        f"end to end; compute worker peak RSS {after / 1024:.0f} MB "
        f"(warm worker before the job: {before / 1024:.0f} MB)"
    )


def load(
    duration: float, threads: int, call: Callable[[int], None], pace: float | None = None
) -> tuple[int, list[float], float]:
    """Call `call` from `threads` threads for `duration` s; (calls, latencies, elapsed).

    Back to back, or with `pace`, call n leaves at n / pace s (open loop: a slow answer does
    not lower the load) and its latency counts from then, so a call that waited for a busy
    thread counts its wait."""
    latencies: list[float] = []
    lock = threading.Lock()
    started = time.perf_counter()
    stop = started + duration
    counter = itertools.count()

    def worker() -> None:
        while time.perf_counter() < stop:
            n = next(counter)
            begun = time.perf_counter()
            if pace is not None:
                due = started + n / pace
                time.sleep(max(0.0, due - begun))
                begun = due
            call(n)
            spent = time.perf_counter() - begun
            with lock:
                latencies.append(spent)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return len(latencies), latencies, time.perf_counter() - started


def _submit_load(target: str, seconds: float, threads: int, results: Queue[Any]) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]

        def call(n: int) -> None:
            day = DAYS[n % 31]
            stub.CalculateDistanceFromHome(
                pb.CalculateDistanceRequest(date=day.isoformat(), device_id=DEVICES[n % 3]),
                timeout=10,
            )

        results.put(load(seconds, threads, call))


def submit_path(stack: Stack, seconds: float) -> None:
    stack.supervisor.services["compute"].stop()
    try:
        # The load comes from a process of its own: this one hosts the dev broker.
        context = multiprocessing.get_context("spawn")
        results: Queue[Any] = context.Queue()
        worker = context.Process(
            target=_submit_load, args=(stack.url("ingress"), seconds, 16, results)
        )
        before = cpu_by_part(stack)
        worker.start()
        calls, latencies, elapsed = results.get(timeout=seconds + 120)
        worker.join()
        # Read after the load process exited: its own CPU is not counted (an exited
        # process leaves /proc), only the services' and this process's (the dev broker).
        after = cpu_by_part(stack)
        print(
            f"CalculateDistanceFromHome alone (compute stopped), 16 client threads, "
            f"{elapsed:.0f} s: {calls / elapsed:.0f} calls/s sustained, "
            f"p50 {ms(statistics.median(latencies))}, p99 {ms(percentile(latencies, 99))}"
        )
        print_cpu(before, after, calls, "call")
    finally:
        with psycopg.connect(stack.database.dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM otel_worker.jobs WHERE status = 'queued'")
        stack.supervisor.restart("compute")


def submit_jobs(stub: distance_pb2_grpc.DistanceServiceStub, count: int, threads: int) -> list[str]:
    ids: list[str] = []
    lock = threading.Lock()
    # Cycled: past the 180 day-device pairs, a pair comes again under a new key (a new job).
    work = iter(itertools.islice(itertools.cycle(itertools.product(DAYS[:60], DEVICES)), count))

    def worker() -> None:
        for day, device in work:
            reply = stub.CalculateDistanceFromHome(
                pb.CalculateDistanceRequest(
                    date=day.isoformat(), device_id=device, idempotency_key=str(uuid.uuid4())
                ),
                timeout=30,
            )
            with lock:
                ids.append(reply.job_id)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return ids


def _processes() -> dict[int, tuple[str, int, float]]:
    """Every process: pid -> (command name, parent pid, CPU seconds spent so far)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # The name is in parentheses and may hold spaces: split after its closing one.
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            found[int(entry.name)] = (
                name,
                int(fields[1]),
                (int(fields[11]) + int(fields[12])) / tick,
            )
    return found


def cpu_by_part(stack: Stack) -> dict[str, float]:
    """CPU seconds spent so far by each service's process tree, the database server,
    PgBouncer, the S3 server and this process (load generator and dev broker)."""
    processes = _processes()
    roots = {
        service.process.pid: name
        for name, service in stack.supervisor.services.items()
        if service.process is not None
    }
    roots[os.getpid()] = "bench + broker"
    spent: dict[str, float] = {}
    for pid, (name, _, seconds) in processes.items():
        # By name first: this process started PgBouncer and the S3 server.
        part = next((p for p in ("postgres", "pgbouncer", "weed") if name.startswith(p)), None)
        ancestor = pid
        while part is None and ancestor in processes:
            part = roots.get(ancestor)
            ancestor = processes[ancestor][1]
        if part is not None:
            spent[part] = spent.get(part, 0.0) + seconds
    return spent


def pipeline_rate(
    stack: Stack, stub: distance_pb2_grpc.DistanceServiceStub, jobs: Jobs, count: int
) -> float:
    before = cpu_by_part(stack)
    started = dt.datetime.now(dt.UTC)
    ids = submit_jobs(stub, count, 8)
    if len(set(ids)) != count:
        raise RuntimeError(f"{count} jobs asked for, {len(set(ids))} created")
    elapsed = (max(jobs.finished(ids, 600).values()) - started).total_seconds()
    after = cpu_by_part(stack)
    rate = count / elapsed
    print(
        f"whole pipeline: {count} one-day jobs submitted and completed in {elapsed:.1f} s: "
        f"{rate:.1f} jobs/s"
    )
    print_cpu(before, after, count, "job")
    return rate


def print_cpu(before: dict[str, float], after: dict[str, float], count: int, unit: str) -> None:
    """The CPU each part spent per `unit` between two `cpu_by_part` readings."""
    spent = {part: after[part] - before.get(part, 0.0) for part in after}
    per_unit = sum(spent.values()) / count
    parts = sorted(spent.items(), key=lambda item: -item[1])
    cores = os.cpu_count() or 1
    print(
        f"  CPU per {unit} {per_unit * 1000:.1f} ms: "
        + ", ".join(f"{part} {seconds / count * 1000:.1f}" for part, seconds in parts)
        + f"; on {cores} cores that caps the rate at {cores / per_unit:.0f} {unit}s/s"
    )


def _status_probe(
    target: str, known: list[str], seconds: float, pace: float | None, results: Queue[Any]
) -> None:
    """GetJobStatus from 2 threads: back to back (`pace` None) or `pace` calls/s in all."""
    with grpc.insecure_channel(target) as channel:
        stub = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]

        def call(n: int) -> None:
            stub.GetJobStatus(pb.GetJobStatusRequest(job_id=known[n % len(known)]), timeout=10)

        results.put(load(seconds, 2, call, pace))


def status_latency(
    stack: Stack,
    stub: distance_pb2_grpc.DistanceServiceStub,
    jobs: Jobs,
    rate: float,
    seconds: float,
) -> None:
    known = [row[0] for row in jobs.conn.execute("SELECT id::text FROM otel_worker.jobs LIMIT 500")]
    stop = threading.Event()

    def feed() -> None:
        interval = 1 / rate
        for day, device in itertools.cycle(itertools.product(DAYS[:60], DEVICES)):
            if stop.is_set():
                return
            begun = time.monotonic()
            stub.CalculateDistanceFromHome(
                pb.CalculateDistanceRequest(
                    date=day.isoformat(), device_id=device, idempotency_key=str(uuid.uuid4())
                ),
                timeout=30,
            )
            time.sleep(max(0.0, interval - (time.monotonic() - begun)))

    feeder = threading.Thread(target=feed)
    feeder.start()
    context = multiprocessing.get_context("spawn")
    try:
        for pace in (None, STATUS_PACE):
            # The probe runs in a process of its own: this one hosts the dev broker and
            # the feeder, whose work would otherwise delay the probe's own threads.
            results: Queue[Any] = context.Queue()
            probe = context.Process(
                target=_status_probe,
                args=(stack.url("ingress"), known, seconds, pace, results),
            )
            probe.start()
            calls, latencies, elapsed = results.get(timeout=seconds + 120)
            probe.join()
            how = "back to back" if pace is None else f"paced at {pace:.0f} calls/s"
            print(
                f"GetJobStatus while jobs are submitted at {rate:.1f}/s ({calls} calls, 2 "
                f"threads {how}, {elapsed:.0f} s): p50 {ms(statistics.median(latencies))}, "
                f"p99 {ms(percentile(latencies, 99))}"
            )
    finally:
        stop.set()
        feeder.join()


def ingress_start(stack: Stack, jobs: Jobs, runs: int) -> None:
    timings = []
    first_jobs = []
    env = {
        **stack.env,
        "SUBMIT_URL": stack.url("submit"),
        "STATUS_URL": stack.url("status"),
        "GRPC_ALLOW_UNAUTHENTICATED": "true",  # the ingress on loopback, no token
    }
    for run in range(runs):
        (port,) = free_ports(1)
        process = ingress_process(port, env)
        begun, begun_at = time.monotonic(), dt.datetime.now(dt.UTC)
        process.start(stdout=subprocess.DEVNULL)
        try:
            while True:
                with contextlib.suppress(grpc.RpcError):
                    if grpc_serving(f"127.0.0.1:{port}", timeout=0.5):
                        break
                time.sleep(0.005)
            serving = time.monotonic() - begun
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]
                reply = stub.CalculateDistanceFromHome(
                    pb.CalculateDistanceRequest(
                        date=DAYS[40 + run].isoformat(), device_id="phone2"
                    ),
                    timeout=30,
                )
                completed = jobs.finished([reply.job_id], 60)[reply.job_id]
            timings.append(serving)
            first_jobs.append((completed - begun_at).total_seconds())
        finally:
            process.stop()
    print(
        f"ingress process start -> health SERVING: median {ms(statistics.median(timings))} "
        f"(best {ms(min(timings))}, {runs} runs); -> first job completed: "
        f"median {ms(statistics.median(first_jobs))}"
    )


@contextlib.contextmanager
def system(admin: str) -> Iterator[tuple[Stack, Jobs]]:
    with services(admin, SPEC) as (database, direct, s3):
        # The broker backs off as deployed (time_scale 1): while compute is stopped, events
        # are retried at the manifests' pace, not the tests' twenty times faster one.
        stack = start_stack(
            database,
            s3,
            time_scale=1.0,
            JOB_LEASE_SECONDS="120",
            JOB_REPUBLISH_SECONDS="120",
            LOG_LEVEL="WARNING",
        )
        try:
            yield stack, Jobs(direct)
        finally:
            stack.supervisor.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30, help="length of the load phases")
    parser.add_argument("--jobs", type=int, default=240, help="jobs in a pipeline round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the pipeline phase")
    args = parser.parse_args()
    if args.jobs < 1 or args.rounds < 1 or args.seconds <= 0:
        parser.error("--jobs and --rounds must be at least 1, --seconds above 0")
    admin = os.environ.get("BENCH_DATABASE_URL") or os.environ.get(
        "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    print(f"machine: {os.cpu_count()} cores; every service a separate process on it")
    print(f"pace at the start: {pace()}")
    with system(admin) as (stack, jobs), grpc.insecure_channel(stack.url("ingress")) as channel:
        stub = distance_pb2_grpc.DistanceServiceStub(channel)  # type: ignore[no-untyped-call]
        one_day_latency(stack, jobs, 5)  # warm-up
        one_day_latency(stack, jobs, 30)
        month_range(stack, jobs)
        # Rounds, each printed: one short round is at the mercy of whatever else the
        # machine does for those few seconds.
        rate = statistics.median(
            pipeline_rate(stack, stub, jobs, args.jobs) for _ in range(args.rounds)
        )
        status_latency(stack, stub, jobs, rate / 2, min(args.seconds, 20))
        ingress_start(stack, jobs, 5)
        # Last: it leaves thousands of undelivered job.queued events behind.
        submit_path(stack, args.seconds)
    print(f"pace at the end: {pace()}")


if __name__ == "__main__":
    main()
