"""Computing a job in-process against the real database and S3 server: what a worker that
outlived its lease can and cannot do to the job another attempt completed."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import migrate, telemetry
from shared.computation import KNOWN_DEVICES_SHOWN, Computation, unknown_device_note
from shared.config import AnalysisSettings, DatabaseSettings
from shared.db import LazyPool
from shared.dev.tracks import TrackSpec, generate
from shared.job_view import job_view
from shared.jobs import ClaimResult, JobRequest
from shared.locations import write_points
from tests.conftest import Database, S3Server, new_computation

SCHEMA = "otel_worker"
DAY = dt.date(2024, 3, 12)
SPEC = TrackSpec(start=DAY - dt.timedelta(days=1), days=3)


@pytest.fixture
def pool(scratch_database: Database) -> Iterator[LazyPool]:
    with scratch_database.connect() as conn:
        migrate.migrate(conn, SCHEMA)
        write_points(conn, generate(SPEC).points)
    lazy = LazyPool(DatabaseSettings(database_url=scratch_database.url))
    yield lazy
    lazy.close()


def _computation(
    pool: LazyPool, s3: S3Server, bucket: str, worker: str, copies: Path
) -> Computation:
    return new_computation(
        pool,
        s3,
        bucket,
        schema=SCHEMA,
        worker=worker,
        source="/tests/computation",
        csv_output_path=copies,
    )


def test_a_worker_that_outlived_its_lease_cannot_replace_the_completed_jobs_objects(
    pool: LazyPool, s3: S3Server, tmp_path: Path
) -> None:
    bucket = f"stale-{uuid.uuid4().hex[:8]}"
    s3.client().make_bucket(bucket)
    late, prompt = (_computation(pool, s3, bucket, w, tmp_path) for w in ("worker-a", "worker-b"))
    params = AnalysisSettings(
        home_latitude=SPEC.home_latitude, home_longitude=SPEC.home_longitude
    ).engine_params()
    job, _ = prompt.jobs.create(
        JobRequest(
            date_from=DAY,
            date_to=DAY,
            device_id="phone1",
            timezone=SPEC.timezone,
            parameters=params.model_dump(mode="json"),
        )
    )
    # Worker A claims the job, then stalls past its lease (a long GC pause, a hung upload).
    first = late.jobs.claim(job.id, "worker-a", lease_seconds=0.2)
    assert first.result == ClaimResult.CLAIMED
    assert first.job is not None
    time.sleep(0.4)
    # The broker's retry reaches worker B, which computes and completes the job.
    assert prompt.run(job.id).detail == f"job {job.id} completed"
    # A fix arrives late for that day, then A wakes up and finishes its own attempt.
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO public.locations (device_id, latitude, longitude, accuracy,"
            ' "timestamp") VALUES (%s, %s, %s, 10, %s)',
            (
                "phone1",
                SPEC.home_latitude + 0.05,
                SPEC.home_longitude,
                dt.datetime(2024, 3, 12, 16, 0, 7, tzinfo=dt.UTC),
            ),
        )
    stale = late._attempt(first.job, telemetry.Phases())
    assert "no longer valid" in stale.detail
    assert stale.event is None
    # The job names B's objects, which are what its size and digest say: A's went beside.
    done = prompt.jobs.get(job.id)
    assert done is not None
    assert (done.status, done.attempts) == ("completed", 2)
    assert done.csv_key is not None
    assert "/attempt-2/" in done.csv_key
    stored = s3.client().get_object(bucket, done.csv_key).read()
    assert (len(stored), hashlib.sha256(stored).hexdigest()) == (done.csv_bytes, done.csv_sha256)
    # A found its lease gone at the fence before its upload: it left no orphans either.
    beside = s3.client().list_objects(bucket, f"jobs/{job.id}/attempt-1/", recursive=True)
    assert list(beside) == []
    # The copy on the shared volume (CSV_OUTPUT_PATH) is B's too, and A left nothing there.
    assert [p.name for p in tmp_path.iterdir()] == [done.csv_key.rsplit("/", 1)[1]]
    assert (tmp_path / done.csv_key.rsplit("/", 1)[1]).read_bytes() == stored


def test_the_note_about_an_unknown_device_caps_the_list_it_gives() -> None:
    assert unknown_device_note("x", []) == (
        "device 'x' has no fixes at all: public.locations is empty"
    )
    known = [f"phone{k:02d}" for k in range(KNOWN_DEVICES_SHOWN + 1)]
    note = unknown_device_note("phone", known)
    assert note.startswith("device 'phone' has no fixes at all in public.locations; ")
    assert note.endswith(f"phone{KNOWN_DEVICES_SHOWN - 1:02d}, …")
    assert f"phone{KNOWN_DEVICES_SHOWN:02d}" not in note
    assert unknown_device_note("p", ["a", "b"]).endswith("devices with fixes: a, b")


def _job(computation: Computation) -> uuid.UUID:
    params = AnalysisSettings(
        home_latitude=SPEC.home_latitude, home_longitude=SPEC.home_longitude
    ).engine_params()
    job, _ = computation.jobs.create(
        JobRequest(
            date_from=DAY,
            date_to=DAY,
            device_id=None,
            timezone=SPEC.timezone,
            parameters=params.model_dump(mode="json"),
        )
    )
    return job.id


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (
            "ALTER TABLE public.locations RENAME TO locations_old",
            "the locations table public.locations does not exist",
        ),
        (
            "ALTER TABLE public.locations RENAME COLUMN accuracy TO acc",
            "the locations table public.locations lacks a column this service reads"
            " (column accuracy does not exist)",
        ),
    ],
    ids=["no-table", "no-column"],
)
def test_a_failed_read_tells_the_caller_what_failed_in_one_line(
    pool: LazyPool, s3: S3Server, tmp_path: Path, breakage: str, message: str
) -> None:
    """What a caller sees of a job whose read failed is one line about the table, never
    PostgreSQL's statement excerpt and caret line."""
    bucket = f"broken-{uuid.uuid4().hex[:8]}"
    s3.client().make_bucket(bucket)
    computation = _computation(pool, s3, bucket, "worker-a", tmp_path)
    job_id = _job(computation)
    with pool.connection() as conn:
        conn.execute(breakage)
    outcome = computation.run(job_id)
    assert outcome.status == 500  # the broker retries: the table may be restored meanwhile
    job = computation.jobs.get(job_id)
    assert job is not None
    assert job.status == "queued"
    assert job.error_message is not None
    assert job.error_message.replace('"', "") == message
    # The last attempt fails the job with the same line, prefixed by the attempts.
    for _ in range(job.max_attempts - 1):
        computation.run(job_id)
    failed = computation.jobs.get(job_id)
    assert failed is not None
    assert failed.status == "failed"
    assert failed.error_message is not None
    assert "\n" not in failed.error_message
    assert failed.error_message.replace('"', "").endswith(f": {message}")
    assert "LINE" not in failed.error_message
    assert "^" not in failed.error_message


@pytest.mark.parametrize(
    ("days", "phases"),
    [
        (1, {"claim", "plan", "read", "engine", "csv", "uploads", "complete"}),
        (2, {"claim", "plan", "assembly", "uploads", "complete"}),
    ],
    ids=["one-day", "range"],
)
def test_a_completed_job_says_where_its_processing_time_went(
    pool: LazyPool, s3: S3Server, tmp_path: Path, days: int, phases: set[str]
) -> None:
    bucket = f"timed-{uuid.uuid4().hex[:8]}"
    s3.client().make_bucket(bucket)
    computation = _computation(pool, s3, bucket, "worker-a", tmp_path)
    params = AnalysisSettings(
        home_latitude=SPEC.home_latitude, home_longitude=SPEC.home_longitude
    ).engine_params()
    job, _ = computation.jobs.create(
        JobRequest(
            date_from=DAY,
            date_to=DAY + dt.timedelta(days=days - 1),
            device_id="phone1",
            timezone=SPEC.timezone,
            parameters=params.model_dump(mode="json"),
        )
    )
    assert computation.run(job.id).detail == f"job {job.id} completed"
    done = computation.jobs.get(job.id)
    assert done is not None
    view = job_view(done)
    assert view.timings_ms is not None
    assert set(view.timings_ms) == phases
    assert all(ms >= 0 for ms in view.timings_ms.values()), view.timings_ms
    # No work hides outside the phases: they add up to claim -> completing commit.
    assert view.processing_time_ms is not None
    assert abs(sum(view.timings_ms.values()) - view.processing_time_ms) <= 1
    assert view.timings_ms["uploads"] > 0
    # The result stays the engine's summary, the same as the summary object uploaded.
    assert view.result is not None
    assert "timings_ms" not in view.result
    assert done.summary_key is not None
    stored = json.loads(s3.client().get_object(bucket, done.summary_key).read())
    assert stored == view.result
