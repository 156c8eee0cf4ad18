"""Range jobs device-day by device-day against the real database and S3 server: kept days
are reused while their key and fingerprint hold, one inserted fix recomputes its
device-day and only it, and a parameter change computes everything afresh."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import migrate
from shared.computation import Computation
from shared.config import AnalysisSettings, DatabaseSettings
from shared.contracts import DayRequested
from shared.db import LazyPool
from shared.dev.tracks import TrackSpec, generate
from shared.engine import day_window
from shared.engine.assembly import day_by_day
from shared.events import Publisher
from shared.job_view import job_view
from shared.jobs import JobRequest
from shared.locations import read_points, write_points
from tests.conftest import Database, RecordingServer, S3Server, new_computation

SCHEMA = "otel_worker"
FIRST = dt.date(2024, 3, 28)
LAST = dt.date(2024, 4, 5)  # a DST change in between
SPEC = TrackSpec(start=FIRST - dt.timedelta(days=1), days=11, devices=2)


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
    return new_computation(
        pool, s3, bucket, schema=SCHEMA, worker="worker-r", source="/tests/ranges"
    )


def _create(computation: Computation, **changes: float) -> uuid.UUID:
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
    return job.id


def _run(computation: Computation, **changes: float) -> dict[str, Any]:
    job_id = _create(computation, **changes)
    outcome = computation.run(job_id)
    assert outcome.detail == f"job {job_id} completed", outcome.detail
    done = computation.jobs.get(job_id)
    assert done is not None
    result = job_view(done).result
    assert result is not None
    return result


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
    assert again == first
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
            dt.datetime(2024, 4, 9, tzinfo=dt.UTC),
            None,
        )
    assert third == day_by_day(points, window, params).model_dump(mode="json")
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


# --- fanned out: each device-day announced as a day.requested event -----------------


@pytest.fixture
def broker() -> Iterator[RecordingServer]:
    """A real HTTP peer standing in for the broker's ingress: it takes the events."""
    server = RecordingServer().start()
    yield server
    server.stop()


def _fanned(computation: Computation, broker: RecordingServer) -> Computation:
    return dataclasses.replace(computation, publisher=Publisher(broker.url))


Run = tuple[uuid.UUID, str, dt.date, dt.date | None]


def _day_events(broker: RecordingServer) -> list[Run]:
    """The day.requested events the broker took, in the order of their first day."""
    out = []
    for request in broker.received:
        assert request["headers"]["ce-type"] == "dev.otelworker.day.requested.v1"
        data = DayRequested.model_validate_json(request["body"])
        out.append((data.job_id, data.device_id, data.day, data.last_day))
    broker.received.clear()
    return sorted(out, key=lambda run: (run[2], run[1]))


def _cells(runs: list[Run]) -> set[tuple[str, dt.date]]:
    return {
        (device, first + dt.timedelta(days=k))
        for _, device, first, last in runs
        for k in range(((last or first) - first).days + 1)
    }


def test_a_fanned_out_range_completes_once_when_its_last_day_is_in(
    computation: Computation, pool: LazyPool, broker: RecordingServer, s3: S3Server
) -> None:
    fanned = _fanned(computation, broker)
    job_id = _create(fanned)
    outcome = fanned.run(job_id)
    assert outcome.detail.startswith(f"job {job_id} waits for ")
    days = _day_events(broker)
    n_days = (LAST - FIRST).days + 1
    assert len(_cells(days)) == n_days * len({run[1] for run in days})
    assert all(len(_cells([run])) <= 7 for run in days)
    job = fanned.jobs.get(job_id)
    assert job is not None
    assert job.status == "processing"
    outcomes = []
    for k, (job_of, device, day, last) in enumerate(days):
        outcomes.append(fanned.run_day(job_of, device, day, last))
        if k == 0:
            # Days coming in renew the waiting job's lease: the sweep sees it alive.
            renewed = fanned.jobs.get(job_id)
            assert renewed is not None
            assert renewed.lease_expires_at is not None
            assert job.lease_expires_at is not None
            assert renewed.lease_expires_at > job.lease_expires_at
            # A repeated event for a day already in: acknowledged, nothing recomputed.
            repeat = fanned.run_day(job_of, device, day, last)
            assert (repeat.status, repeat.detail) == (
                200,
                f"{device} {day}..{days[0][3]} of job {job_id}: nothing left to compute",
            )
    completed = [o for o in outcomes if o.event is not None]
    assert len(completed) == 1  # the last day's compute assembled the job, the others not
    assert outcomes[-1].detail == f"job {job_id} completed"
    done = fanned.jobs.get(job_id)
    assert done is not None
    assert done.status == "completed"
    # The same figures as computing the range in one attempt, and a CSV of every row.
    alone = _run(computation)
    view = job_view(done)
    assert view.result == alone
    # The assembling compute says where the job's time went: its own phases, and the days
    # (the job's claim, the fan-out, the days computed elsewhere) adding up to the rest.
    assert view.timings_ms is not None
    assert set(view.timings_ms) == {"plan", "assembly", "uploads", "days"}
    assert view.processing_time_ms is not None
    assert abs(sum(view.timings_ms.values()) - view.processing_time_ms) <= 1
    assert done.csv_key is not None
    body = s3.client().get_object(computation.storage.minio_bucket, done.csv_key).read()
    assert body.count(b"\n") == alone["points"]["read"] + 1
    # Every day of the job is named by it, done.
    with pool.connection() as conn:
        statuses = conn.execute(
            f"SELECT status, count(*) FROM {SCHEMA}.job_days WHERE job_id = %s GROUP BY 1",
            (job_id,),
        ).fetchall()
    assert statuses == [("done", len(_cells(days)))]
    # A late repeat of the last event after completion: nothing happens.
    assert fanned.run_day(*days[-1]).status == 200
    assert fanned.jobs.get(job_id) == done


def test_a_day_whose_compute_died_is_taken_over_after_its_lease(
    computation: Computation, pool: LazyPool, broker: RecordingServer
) -> None:
    fanned = dataclasses.replace(_fanned(computation, broker), lease_seconds=0.3)
    job_id = _create(fanned)
    fanned.run(job_id)
    days = _day_events(broker)
    # A compute claims the first day, then dies (its pod is killed) before finishing.
    first = days[0]
    claim = fanned._ranges().days.claim(job_id, first[1], (first[2], first[3] or first[2]), 0.3, 3)
    assert claim.claimed
    busy = fanned.run_day(*days[0])
    assert busy.status == 409  # the broker retries while the dead attempt's lease lasts
    time.sleep(0.5)
    outcomes = [fanned.run_day(*day) for day in days]
    assert outcomes[-1].detail == f"job {job_id} completed"
    done = fanned.jobs.get(job_id)
    assert done is not None
    assert done.result is not None
    assert done.result["points"] == _run(computation)["points"]  # nothing lost or doubled


def test_cancelling_a_range_job_cancels_its_pending_days(
    computation: Computation, pool: LazyPool, broker: RecordingServer
) -> None:
    fanned = _fanned(computation, broker)
    job_id = _create(fanned)
    fanned.run(job_id)
    days = _day_events(broker)
    fanned.run_day(*days[0])
    assert fanned.jobs.cancel(job_id) is not None
    with pool.connection() as conn:
        statuses = dict(
            conn.execute(
                f"SELECT status, count(*) FROM {SCHEMA}.job_days WHERE job_id = %s GROUP BY 1",
                (job_id,),
            ).fetchall()
        )
        kept_before = conn.execute(f"SELECT count(*) FROM {SCHEMA}.day_results").fetchone()
    assert statuses == {"done": len(_cells(days[:1])), "cancelled": len(_cells(days[1:]))}
    later = fanned.run_day(*days[1])
    assert later.status == 200
    assert later.detail.endswith(": nothing left to compute")
    with pool.connection() as conn:
        assert conn.execute(f"SELECT count(*) FROM {SCHEMA}.day_results").fetchone() == kept_before
    job = fanned.jobs.get(job_id)
    assert job is not None
    assert job.status == "cancelled"


def test_the_sweep_requeuing_a_job_while_its_last_day_finishes_loses_nothing(
    computation: Computation, pool: LazyPool, broker: RecordingServer
) -> None:
    fanned = _fanned(computation, broker)
    job_id = _create(fanned)
    fanned.run(job_id)
    days = _day_events(broker)
    for day in days[:-1]:
        fanned.run_day(*day)
    # The job's lease runs out just as the last day finishes: the sweep requeues the job.
    with pool.connection() as conn:
        conn.execute(
            f"UPDATE {SCHEMA}.jobs SET lease_expires_at = now() - interval '1 s' WHERE id = %s",
            (job_id,),
        )
    fanned.jobs.sweep(None)
    last = fanned.run_day(*days[-1])
    # The last day's compute finds the job no longer its to finish (or finishes it).
    job = fanned.jobs.get(job_id)
    assert job is not None
    if job.status != "completed":
        assert last.event is None
        # The requeued job's next attempt finds every day kept and assembles at once.
        again = fanned.run(job_id)
        assert again.detail == f"job {job_id} completed"
        assert _day_events(broker) == []
    done = fanned.jobs.get(job_id)
    assert done is not None
    assert done.result is not None
    assert done.result["points"] == _run(computation)["points"]
