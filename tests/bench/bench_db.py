"""Benchmark of the PostgreSQL side: seeding, the locations reader, the jobs store.

Run with `make bench-db` (or `python -m tests.bench.bench_db --help`). It creates its own
database on the server (BENCH_DATABASE_URL, else TEST_DATABASE_URL, else
postgres@127.0.0.1:5432), starts its own PgBouncer in transaction pooling mode in front of
it, and drops both at the end. Each figure is measured `--repeat` times, the runs of the
compared paths interleaved, and reported as best and median: the machine is shared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shared import locations, migrate
from shared.config import JobSettings
from shared.dev.stack import PgBouncer
from shared.engine.points import MISSING, MISSING_TIME, US_PER_S, Points
from shared.jobs import JobRequest, JobStore

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
DEVICES = ("phone", "tablet", "watch")


def synthetic_points(rows: int, seed: int = 42) -> Points:
    """`rows` fixes one second apart, devices interleaved, with some NULLs."""
    rng = np.random.default_rng(seed)
    accuracy = rng.integers(3, 80, rows)
    accuracy[rng.random(rows) < 0.05] = MISSING
    velocity = rng.integers(0, 90, rows)
    velocity[rng.random(rows) < 0.4] = MISSING
    timestamp = int(START.timestamp()) * US_PER_S + np.arange(rows, dtype=np.int64) * US_PER_S
    created = timestamp + rng.integers(0, 5 * US_PER_S, rows)
    created[rng.random(rows) < 0.01] = MISSING_TIME
    return Points.from_columns(
        DEVICES,
        device=np.arange(rows) % len(DEVICES),
        timestamp=timestamp,
        lat=40.7 + rng.normal(0, 0.05, rows),
        lon=-74.0 + rng.normal(0, 0.05, rows),
        accuracy=accuracy,
        velocity=velocity,
        battery=rng.integers(5, 101, rows),
        created_at=created,
    )


@contextmanager
def bench_database(admin: str) -> Iterator[dict[str, Any]]:
    """A fresh database for the benchmark (its conninfo parameters), dropped afterwards."""
    name = f"otel_worker_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = {**conninfo_to_dict(admin), "dbname": name}
    try:
        yield params
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, prepare_threshold=None)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def rate(label: str, count: int, seconds: list[float], unit: str) -> float:
    best = count / min(seconds)
    median = count / statistics.median(seconds)
    print(f"  {label:<44} best {best:>12,.0f} {unit}   median {median:>12,.0f} {unit}")
    return median


def bench_reader(direct: str, bouncer: str, rows: int, repeat: int) -> None:
    end = START + dt.timedelta(seconds=rows)
    fetch_query = (
        'SELECT device_id, "timestamp", latitude, longitude, accuracy, velocity, battery,'
        ' created_at FROM public.locations WHERE "timestamp" >= %s AND "timestamp" < %s'
        ' ORDER BY device_id, "timestamp"'
    )
    with connect(direct) as near, connect(bouncer) as far:
        # Warm the cache and check both routes agree before timing anything.
        first = locations.read_points(near, START, end, None)
        second = locations.read_points(far, START, end, None)
        assert len(first) == rows, f"the window holds {len(first)} rows, not {rows}"
        for name in ("device", "timestamp", "lat", "lon", "accuracy", "created_at"):
            assert np.array_equal(getattr(first, name), getattr(second, name)), name
        del first, second
        runs: dict[str, list[float]] = {"direct": [], "pgbouncer": [], "fetchall": []}
        server: list[float] = []
        for _ in range(repeat):
            runs["direct"].append(timed(lambda: locations.read_points(near, START, end, None)))
            runs["pgbouncer"].append(timed(lambda: locations.read_points(far, START, end, None)))
            runs["fetchall"].append(
                timed(lambda: near.execute(fetch_query, [START, end]).fetchall())
            )
            server.append(timed(lambda: server_only(near, end)))
    print(f"locations reader, {rows:,} rows of {len(DEVICES)} devices into numpy:")
    reader = rate("read_points, direct", rows, runs["direct"], "rows/s")
    rate("read_points, through PgBouncer", rows, runs["pgbouncer"], "rows/s")
    baseline = rate("cursor.fetchall() baseline (direct)", rows, runs["fetchall"], "rows/s")
    rate("server alone (same COPYs to /dev/null)", rows, server, "rows/s")
    print(f"  read_points direct / fetchall (medians): {reader / baseline:.1f}x")


def server_only(conn: psycopg.Connection[Any], end: dt.datetime) -> None:
    """The reader's COPY queries written by the server to /dev/null: its share of the time."""
    for device in DEVICES:
        select = sql.SQL(
            'SELECT "timestamp", latitude, longitude, COALESCE(accuracy, -1),'
            " COALESCE(velocity, -1), COALESCE(battery, -1), COALESCE(created_at, '-infinity')"
            ' FROM public.locations WHERE device_id = {} AND "timestamp" >= {}'
            ' AND "timestamp" < {} ORDER BY "timestamp"'
        ).format(sql.Literal(device), sql.Literal(START), sql.Literal(end))
        conn.execute(sql.SQL("COPY ({}) TO '/dev/null' (FORMAT BINARY)").format(select))


JOB_REQUEST = JobRequest(
    date_from=dt.date(2024, 1, 1), date_to=dt.date(2024, 1, 1), timezone="America/New_York"
)


def job_cycles(dsn: str, schema: str, count: int) -> float:
    """Run `count` create + claim + complete cycles on one connection; the seconds taken."""
    with connect(dsn) as conn:
        store = JobStore(conn, JobSettings(), schema=schema)

        def cycles() -> None:
            for _ in range(count):
                job, _ = store.create(JOB_REQUEST)
                lease = store.claim(job.id, "bench").job
                assert lease is not None
                assert lease.lease_token is not None
                store.complete(job.id, lease.lease_token, result={"points": 0})

        return timed(cycles)


def _job_worker(
    dsn: str, schema: str, count: int, barrier: Any, results: multiprocessing.Queue[Any]
) -> None:
    barrier.wait()
    started = time.time()
    job_cycles(dsn, schema, count)
    results.put((started, time.time()))


def job_cycles_in_processes(dsn: str, schema: str, count: int, processes: int) -> float:
    """`processes` processes (like gunicorn workers or pods) sharing `count` cycles."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results: multiprocessing.Queue[Any] = context.Queue()
    workers = [
        context.Process(
            target=_job_worker, args=(dsn, schema, count // processes, barrier, results)
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    spans: list[tuple[float, float]] = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    return max(end for _, end in spans) - min(start for start, _ in spans)


def bench_jobs(direct: str, bouncer: str, cycles: int, processes: int, repeat: int) -> None:
    schema = "otel_worker"
    with connect(direct) as conn:
        migrate.migrate(conn, schema)
    runs: dict[str, list[float]] = {"direct": [], "pgbouncer": [], "concurrent": []}
    for _ in range(repeat):
        runs["direct"].append(job_cycles(direct, schema, cycles))
        runs["pgbouncer"].append(job_cycles(bouncer, schema, cycles))
        runs["concurrent"].append(job_cycles_in_processes(bouncer, schema, cycles, processes))
    print(f"jobs store, create + claim + complete ({cycles:,} cycles a run):")
    rate("one connection, direct", cycles, runs["direct"], "cycles/s")
    rate("one connection, through PgBouncer", cycles, runs["pgbouncer"], "cycles/s")
    total = cycles // processes * processes
    label = f"{processes} processes, through PgBouncer"
    rate(label, total, runs["concurrent"], "cycles/s")


def seed(direct: str, rows: int) -> None:
    points = synthetic_points(rows)
    with connect(direct) as conn:
        seconds = timed(lambda: locations.write_points(conn, points))
    print(
        f"seeding: {rows:,} rows written with binary COPY in {seconds:.1f} s "
        f"({rows / seconds:,.0f} rows/s, index and ANALYZE included)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-rows", type=int, default=3_000_000)
    parser.add_argument("--read-rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=1_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument(
        "--only",
        choices=("reader", "jobs"),
        help="run one part: the locations reader (seeding included) or the jobs store",
    )
    args = parser.parse_args()
    admin = os.environ.get(
        "BENCH_DATABASE_URL",
        os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    with bench_database(admin) as params:
        direct = make_conninfo(**params)
        bouncer = PgBouncer(
            server_host=str(params.get("host", "127.0.0.1")),
            server_port=int(params.get("port", 5432)),
            dbname=str(params["dbname"]),
            user=str(params.get("user", "postgres")),
        ).start()
        try:
            if args.only in (None, "reader"):
                seed(direct, args.seed_rows)
                bench_reader(direct, bouncer.dsn, min(args.read_rows, args.seed_rows), args.repeat)
            if args.only in (None, "jobs"):
                bench_jobs(direct, bouncer.dsn, args.cycles, args.processes, args.repeat)
        finally:
            bouncer.stop()


if __name__ == "__main__":
    main()
