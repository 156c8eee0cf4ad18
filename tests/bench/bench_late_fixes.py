"""Benchmark of the late-fix check (`otel-worker refresh`) on a two-year table.

Run with `make bench-late-fixes` (or `python -m tests.bench.bench_late_fixes --help`). It
creates its own database (BENCH_DATABASE_URL, else TEST_DATABASE_URL, else
postgres@127.0.0.1:5432) with two years of generated fixes for two phones at 30 s, reached
through its own PgBouncer in transaction pooling mode, and a SeaweedFS S3 server for the
kept days' CSVs; all dropped at the end. It keeps the last REFRESH_DAYS as a completed range
job would, then times the check when nothing changed (what nearly every run finds), and
once an hour of fixes held back by a phone is uploaded late (recompute and supersede).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from shared import locations, migrate
from shared.computation import Computation
from shared.config import AnalysisSettings, JobSettings, StorageSettings
from shared.dev.stack import PgBouncer, SeaweedS3
from shared.dev.tracks import TrackSpec, generate
from shared.jobs import JobRequest, JobStore
from shared.supersession import LateFixCheck, ranges_on
from tests.bench.bench_db import bench_database, connect

SCHEMA = "otel_worker"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=730, help="days of history (730)")
    parser.add_argument("--refresh-days", type=int, default=7, help="REFRESH_DAYS (7)")
    parser.add_argument("--repeat", type=int, default=7, help="quiet checks timed (7)")
    args = parser.parse_args()
    admin = os.environ.get(
        "BENCH_DATABASE_URL",
        os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    spec = TrackSpec(seed=11, start=dt.date(2023, 1, 1), days=args.days, devices=2)
    last = spec.start + dt.timedelta(days=spec.days - 1)
    today = last + dt.timedelta(days=1)
    with bench_database(admin) as params, tempfile.TemporaryDirectory() as folder:
        direct = " ".join(f"{key}={value}" for key, value in params.items())
        bouncer = PgBouncer(
            server_host=str(params.get("host", "127.0.0.1")),
            server_port=int(params.get("port", 5432)),
            dbname=str(params["dbname"]),
            user=str(params.get("user", "postgres")),
        ).start()
        s3 = SeaweedS3(
            data_dir=Path(folder), access_key="bench", secret_key=uuid.uuid4().hex
        ).start()
        try:
            started = time.perf_counter()
            points = generate(spec).points
            with connect(direct) as conn:
                locations.write_points(conn, points, force=True)
                migrate.migrate(conn, SCHEMA)
                conn.execute("VACUUM ANALYZE public.locations")
            print(
                f"table: {len(points):,} fixes, {spec.devices} devices, {spec.days} days"
                f" ({time.perf_counter() - started:.0f} s to generate and load)"
            )
            run(bouncer.dsn, s3, spec, today, args)
        finally:
            s3.stop()
            bouncer.stop()


def run(dsn: str, s3: SeaweedS3, spec: TrackSpec, today: dt.date, args: argparse.Namespace) -> None:
    """Keep the refresh window through a completed range job, then time the checks."""
    storage = StorageSettings.model_validate(
        {
            "minio_endpoint": s3.endpoint,
            "minio_access_key": s3.access_key,
            "minio_secret_key": s3.secret_key,
        }
    )
    first = today - dt.timedelta(days=args.refresh_days)
    last = today - dt.timedelta(days=1)
    held = _held_back(spec, last)
    with connect(dsn) as conn:
        conn.execute(
            "CREATE TABLE held AS SELECT * FROM public.locations WHERE device_id = 'phone1'"
            ' AND "timestamp" >= %s AND "timestamp" < %s',
            held,
        )
        conn.execute(
            "DELETE FROM public.locations WHERE device_id = 'phone1' AND \"timestamp\" >= %s"
            ' AND "timestamp" < %s',
            held,
        )
        store = JobStore(conn, JobSettings(refresh_days=args.refresh_days), schema=SCHEMA)
        computation = Computation(
            jobs=store,
            connection=store.connection,
            objects=ranges_on(store, storage).objects,
            storage=storage,
            worker="bench",
            source="/bench",
            lease_seconds=600,
        )
        parameters = AnalysisSettings(
            home_latitude=spec.home_latitude, home_longitude=spec.home_longitude
        ).engine_params()
        job, _ = store.create(
            JobRequest(
                date_from=first,
                date_to=last,
                timezone=spec.timezone,
                parameters=parameters.model_dump(mode="json"),
            )
        )
        started = time.perf_counter()
        assert computation.run(job.id).detail == f"job {job.id} completed"
        print(
            f"kept: a completed range job over {first} to {last}"
            f" ({time.perf_counter() - started:.1f} s)"
        )
        check = LateFixCheck(store, ranges_on(store, storage), args.refresh_days)
        quiet = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            report = check.run(today, None, "/bench")
            quiet.append(time.perf_counter() - started)
            assert not report.stale
            assert not report.superseded
        print(
            f"quiet check (nothing changed): {report.kept} kept device-days, best"
            f" {min(quiet) * 1000:.1f} ms, median {statistics.median(quiet) * 1000:.1f} ms"
            f" over {args.repeat} runs"
        )
        uploaded = conn.execute("INSERT INTO public.locations SELECT * FROM held").rowcount
        started = time.perf_counter()
        report = check.run(today, None, "/bench")
        took = time.perf_counter() - started
        print(
            f"late upload of {uploaded} fixes: {len(report.stale)} stale device-days,"
            f" {report.recomputed} recomputed, {len(report.superseded)} job superseded,"
            f" {took * 1000:.0f} ms"
        )


def _held_back(spec: TrackSpec, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """08:00 to 09:00 local on `day`: the hour phone1's upload is held back."""
    from zoneinfo import ZoneInfo

    start = dt.datetime.combine(day, dt.time(8), ZoneInfo(spec.timezone))
    return start, start + dt.timedelta(hours=1)


if __name__ == "__main__":
    main()
