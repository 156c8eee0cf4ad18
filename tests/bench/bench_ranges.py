"""Benchmark of long ranges through the whole system (`otel-worker dev`'s stack: every
function a process, several compute workers, the dev broker, PostgreSQL through PgBouncer,
SeaweedFS). Run with `make bench-ranges`.

Prints, for the issue targets:
  - a 365-day range of 2 devices at 30 s fixes (~2.1 M fixes), first run: submit ->
    completed, and how many device-days were computed;
  - the same range again under a new idempotency key: submit -> completed, and whether
    its figures are identical;
  - one fix inserted, the range again: submit -> completed, and which device-days were
    computed again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from typing import Any

import psycopg
import urllib3

from shared.dev.tracks import TrackSpec
from tests.bench.bench_pipeline import pace
from tests.bench.services import services
from tests.stack import Stack, start_stack

SCHEMA = "otel_worker"


def run_range(stack: Stack, direct: str, first: dt.date, last: dt.date) -> tuple[float, Any]:
    """Submit the range (a new idempotency key each time) and wait for it: seconds from
    submit to completed_at, and the job's result."""
    started = dt.datetime.now(dt.UTC)
    reply = urllib3.request(
        "POST",
        stack.url("submit"),
        json={"date": first.isoformat(), "end_date": last.isoformat()},
    )
    assert reply.status in (200, 201, 202), reply.data
    job_id = reply.json()["job"]["job_id"]
    with psycopg.connect(direct, autocommit=True) as conn:
        deadline = time.monotonic() + 600
        row: tuple[Any, ...] | None = None
        while time.monotonic() < deadline:
            row = conn.execute(
                f"SELECT status, completed_at, error_message FROM {SCHEMA}.jobs WHERE id = %s",
                (job_id,),
            ).fetchone()
            if row is not None and row[0] in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.05)
        assert row is not None
        assert row[0] == "completed", row
        result = conn.execute(
            f"SELECT result FROM {SCHEMA}.jobs WHERE id = %s", (job_id,)
        ).fetchone()
    assert result is not None
    return (row[1] - started).total_seconds(), result[0]


def computed_at(direct: str) -> dict[tuple[str, dt.date], dt.datetime]:
    with psycopg.connect(direct, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT device_id, day, computed_at FROM {SCHEMA}.day_results"
        ).fetchall()
    return {(device, day): at for device, day, at in rows}


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """The result without its notes (which say how the CSV was made)."""
    return {key: value for key, value in result.items() if key != "notes"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=365, help="days in the range (365)")
    parser.add_argument("--devices", type=int, default=2, help="devices (2)")
    parser.add_argument("--workers", type=int, default=3, help="compute processes (3)")
    args = parser.parse_args()
    if args.days < 2 or args.devices < 1 or args.workers < 1:
        parser.error("--days must be at least 2, --devices and --workers at least 1")
    admin = os.environ.get("BENCH_DATABASE_URL") or os.environ.get(
        "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    first = dt.date(2024, 1, 1)
    last = first + dt.timedelta(days=args.days - 1)
    # A day of context on each side of the range.
    spec = TrackSpec(
        seed=19, start=first - dt.timedelta(days=1), days=args.days + 2, devices=args.devices
    )
    print(f"machine: {os.cpu_count()} cores; every service a separate process on it")
    print(f"pace at the start: {pace()}")
    with services(admin, spec) as (database, direct, s3):
        stack = start_stack(
            database,
            s3,
            time_scale=1.0,
            compute_workers=args.workers,
            JOB_LEASE_SECONDS="300",
            JOB_REPUBLISH_SECONDS="120",
            LOG_LEVEL="WARNING",
        )
        try:
            seconds, result = run_range(stack, direct, first, last)
            kept = computed_at(direct)
            print(
                f"{args.days}-day range, {args.devices} device(s), "
                f"{result['points']['read']:,} fixes, {args.workers} compute workers: "
                f"first run {seconds:.2f} s submit -> completed ({len(kept)} device-days "
                "computed)"
            )
            seconds, again = run_range(stack, direct, first, last)
            same = "identical" if figures(again) == figures(result) else "DIFFERENT"
            print(
                f"same range, new idempotency key: {seconds:.2f} s submit -> completed; "
                f"figures {same}; device-days computed again: "
                f"{sum(computed_at(direct)[c] != kept[c] for c in kept)}"
            )
            before = computed_at(direct)
            device = sorted(result["devices"])[0]
            at = dt.datetime.combine(
                first + dt.timedelta(days=args.days // 2), dt.time(12, 0, 7), dt.UTC
            )
            with psycopg.connect(direct, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO public.locations (device_id, latitude, longitude, accuracy,"
                    ' "timestamp") VALUES (%s, %s, %s, 10, %s)',
                    (device, spec.home_latitude + 0.05, spec.home_longitude, at),
                )
            seconds, third = run_range(stack, direct, first, last)
            after = computed_at(direct)
            again_days = sorted(
                f"{d} {day}" for (d, day), t in after.items() if t != before[(d, day)]
            )
            print(
                f"one fix inserted at {at:%Y-%m-%d %H:%M:%S}Z for {device}: {seconds:.2f} s "
                f"submit -> completed; fixes {third['points']['read']:,} "
                f"(+{third['points']['read'] - result['points']['read']}); device-days "
                f"computed again: {', '.join(again_days) or 'none'}"
            )
        finally:
            stack.supervisor.stop()
    print(f"pace at the end: {pace()}")


if __name__ == "__main__":
    main()
