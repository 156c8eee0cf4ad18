"""Range jobs device-day by device-day against the real database and S3 server: kept days
are reused while their key and fingerprint hold, one inserted fix recomputes its
device-day and only it, and a parameter change computes everything afresh."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import migrate
from shared.computation import Computation
from shared.config import AnalysisSettings, DatabaseSettings, JobSettings, StorageSettings
from shared.db import LazyPool
from shared.dev.tracks import TrackSpec, generate
from shared.engine import day_window
from shared.engine.assembly import day_by_day
from shared.jobs import JobRequest, JobStore
from shared.locations import read_points, write_points
from shared.storage import ObjectStore
from tests.conftest import Database, S3Server

SCHEMA = "otel_worker"
FIRST = dt.date(2024, 3, 28)
LAST = dt.date(2024, 4, 2)  # a DST change in between
SPEC = TrackSpec(start=FIRST - dt.timedelta(days=1), days=8)


@pytest.fixture
def pool(scratch_database: Database) -> Iterator[LazyPool]:
    with scratch_database.connect() as conn:
        migrate.migrate(conn, SCHEMA)
        write_points(conn, generate(SPEC).points)
    lazy = LazyPool(DatabaseSettings(database_url=scratch_database.url))
    yield lazy
    lazy.close()


@pytest.fixture
def computation(pool: LazyPool, s3: S3Server) -> Computation:
    bucket = f"ranges-{uuid.uuid4().hex[:8]}"
    s3.client().make_bucket(bucket)
    storage = StorageSettings.model_validate(
        {
            "minio_endpoint": s3.endpoint,
            "minio_access_key": s3.writer.access_key,
            "minio_secret_key": s3.writer.secret_key,
            "minio_region": s3.region,
            "minio_bucket": bucket,
            "minio_create_bucket": False,
        }
    )
    return Computation(
        jobs=JobStore(pool.connection, JobSettings(), schema=SCHEMA),
        connection=pool.connection,
        objects=ObjectStore(storage),
        storage=storage,
        worker="worker-r",
        source="/tests/ranges",
        lease_seconds=60,
    )


def _run(computation: Computation, **changes: float) -> dict[str, Any]:
    params = AnalysisSettings(
        home_latitude=SPEC.home_latitude, home_longitude=SPEC.home_longitude
    ).engine_params()
    job, _ = computation.jobs.create(
        JobRequest(
            date_from=FIRST,
            date_to=LAST,
            device_id=None,
            timezone=SPEC.timezone,
            parameters=params.model_copy(update=changes).model_dump(mode="json"),
        ),
        idempotency_key=uuid.uuid4().hex,
    )
    outcome = computation.run(job.id)
    assert outcome.detail == f"job {job.id} completed", outcome.detail
    done = computation.jobs.get(job.id)
    assert done is not None
    assert done.result is not None
    return done.result


def _computed_at(pool: LazyPool) -> dict[tuple[str, dt.date, str], dt.datetime]:
    with pool.connection() as conn:
        rows = conn.execute(
            f"SELECT key_hash, device_id, day, computed_at FROM {SCHEMA}.day_results"
        ).fetchall()
    return {(device, day, key): at for key, device, day, at in rows}


def test_a_range_reuses_its_kept_days_and_recomputes_only_the_day_a_fix_changed(
    computation: Computation, pool: LazyPool, tmp_path: Path
) -> None:
    first = _run(computation)
    kept = _computed_at(pool)
    devices = sorted(first["devices"])
    assert len(kept) == len(devices) * ((LAST - FIRST).days + 1)
    # Same range under a new idempotency key: every day reused, the same figures.
    again = _run(computation)
    assert _computed_at(pool) == kept
    note = "days were reused from earlier jobs: the CSV lists each device-day's CSV instead"
    assert again["notes"] == [*first["notes"], note + " of holding the rows"]
    assert {**again, "notes": first["notes"]} == first
    # One fix inserted on one device-day: that day (and the days whose context holds it)
    # are recomputed, no other.
    at = dt.datetime(2024, 3, 30, 11, 0, 7, tzinfo=dt.UTC)
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO public.locations (device_id, latitude, longitude, accuracy,"
            ' "timestamp") VALUES (%s, %s, %s, 10, %s)',
            (devices[0], SPEC.home_latitude + 0.05, SPEC.home_longitude, at),
        )
    third = _run(computation)
    after = _computed_at(pool)
    changed = sorted(cell[1] for cell in after if after[cell] != kept[cell])
    assert {cell[0] for cell in after if after[cell] != kept[cell]} == {devices[0]}
    assert changed == [dt.date(2024, 3, 29), dt.date(2024, 3, 30), dt.date(2024, 3, 31)]
    assert third["points"]["read"] == first["points"]["read"] + 1
    # The figures are those of the engine over the same data, day by day.
    params = AnalysisSettings(
        home_latitude=SPEC.home_latitude, home_longitude=SPEC.home_longitude
    ).engine_params()
    window = day_window(FIRST, LAST, SPEC.timezone)
    with pool.connection() as conn:
        points = read_points(
            conn,
            dt.datetime(2024, 3, 26, tzinfo=dt.UTC),
            dt.datetime(2024, 4, 5, tzinfo=dt.UTC),
            None,
        )
    expected = day_by_day(points, window, params).model_dump(mode="json")
    assert {**third, "notes": expected["notes"]} == expected
    assert [m["month"] for m in third["months"]] == ["2024-03", "2024-04"]


def test_a_parameter_change_computes_every_day_afresh(
    computation: Computation, pool: LazyPool
) -> None:
    first = _run(computation)
    kept = _computed_at(pool)
    wider = _run(computation, exit_radius_km=2.0, enter_radius_km=1.5)
    after = _computed_at(pool)
    assert len(after) == 2 * len(kept)  # a second key: a second set of days
    assert wider["parameters"]["exit_radius_km"] == 2.0
    assert wider["points"] == first["points"]
