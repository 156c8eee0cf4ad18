"""Waiting for a job to finish: the database announces finishes, status's waits hear them.

The jobs store runs through PgBouncer, as deployed; the listener on a direct connection.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from shared import migrate
from shared.config import JobSettings
from shared.jobs import Job, JobRequest, JobStatus, JobStore
from shared.waiting import JobWaits, TooManyWaits, finished_channel
from tests.conftest import Database

REQUEST = JobRequest(
    date_from=dt.date(2024, 3, 9), date_to=dt.date(2024, 3, 9), timezone="America/New_York"
)


@pytest.fixture
def schema(pgbouncer: Database) -> Iterator[str]:
    name = f"jobs_{uuid.uuid4().hex[:10]}"
    with pgbouncer.connect() as conn:
        migrate.migrate(conn, name)
    yield name
    with pgbouncer.connect() as conn:
        conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
def store(pgbouncer: Database, schema: str) -> Iterator[JobStore]:
    with pgbouncer.connect() as conn:
        yield JobStore(conn, JobSettings(job_max_attempts=1), schema=schema)


@pytest.fixture
def worker_store(pgbouncer: Database, schema: str) -> Iterator[JobStore]:
    """A store on a connection of its own, for the thread that finishes jobs."""
    with pgbouncer.connect() as conn:
        yield JobStore(conn, JobSettings(job_max_attempts=1), schema=schema)


def _reader(pgbouncer: Database, schema: str, job_id: uuid.UUID) -> Callable[[], Job]:
    """What status does per read: a connection lent for one lookup."""

    def read() -> Job:
        with pgbouncer.connect() as conn:
            job = JobStore(conn, JobSettings(), schema=schema).get(job_id)
        assert job is not None
        return job

    return read


def _later(seconds: float, action: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()))
    thread.start()
    return thread


def _finish(store: JobStore, job: Job) -> None:
    lease = store.claim(job.id, "worker").job
    assert lease is not None
    assert lease.lease_token is not None
    store.complete(job.id, lease.lease_token, result={"ok": True})


def test_every_finish_is_announced_and_nothing_else(
    postgres: Database, store: JobStore, schema: str
) -> None:
    with psycopg.connect(postgres.dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{finished_channel(schema)}"')
        completed, _ = store.create(REQUEST)
        _finish(store, completed)
        failed, _ = store.create(REQUEST)
        lease = store.claim(failed.id, "worker").job
        assert lease is not None
        assert lease.lease_token is not None
        store.fail(failed.id, lease.lease_token, "no such device")
        cancelled, _ = store.create(REQUEST)
        store.cancel(cancelled.id)
        running, _ = store.create(REQUEST)
        store.claim(running.id, "worker")  # claimed, not finished: no announcement
        heard = [note.payload for note in listener.notifies(timeout=1.0)]
    assert heard == [str(completed.id), str(failed.id), str(cancelled.id)]


def test_a_wait_answers_when_the_job_finishes_not_when_it_runs_out(
    postgres: Database, pgbouncer: Database, schema: str, store: JobStore, worker_store: JobStore
) -> None:
    waits = JobWaits(postgres.dsn, schema, max_waits=4, max_seconds=30)
    try:
        job, _ = store.create(REQUEST)
        finisher = _later(0.5, lambda: _finish(worker_store, job))
        begun = time.monotonic()
        seen = waits.wait(job.id, 20, _reader(pgbouncer, schema, job.id))
        elapsed = time.monotonic() - begun
        finisher.join()
        assert waits.listening
    finally:
        waits.close()
    assert seen.status is JobStatus.COMPLETED
    assert 0.5 <= elapsed < 10  # woken by the finish, long before the 20 s asked


def test_without_a_listener_a_wait_still_sees_the_finish(
    pgbouncer: Database, schema: str, store: JobStore, worker_store: JobStore
) -> None:
    waits = JobWaits(None, schema, max_waits=4, max_seconds=30)
    job, _ = store.create(REQUEST)
    finisher = _later(0.3, lambda: _finish(worker_store, job))
    seen = waits.wait(job.id, 20, _reader(pgbouncer, schema, job.id))
    finisher.join()
    assert not waits.listening
    assert seen.status is JobStatus.COMPLETED


def test_a_wait_that_runs_out_answers_the_job_as_it_stands(
    postgres: Database, pgbouncer: Database, schema: str, store: JobStore
) -> None:
    waits = JobWaits(postgres.dsn, schema, max_waits=4, max_seconds=0.4)
    try:
        job, _ = store.create(REQUEST)
        begun = time.monotonic()
        seen = waits.wait(job.id, 60, _reader(pgbouncer, schema, job.id))  # cut to 0.4 s
        elapsed = time.monotonic() - begun
    finally:
        waits.close()
    assert seen.status is JobStatus.QUEUED
    assert 0.4 <= elapsed < 10


def test_waits_beyond_the_cap_are_refused_but_finished_jobs_still_answered(
    postgres: Database, pgbouncer: Database, schema: str, store: JobStore, worker_store: JobStore
) -> None:
    waits = JobWaits(postgres.dsn, schema, max_waits=1, max_seconds=30)
    try:
        job, _ = store.create(REQUEST)
        read = _reader(pgbouncer, schema, job.id)
        results: list[Any] = []
        first = threading.Thread(target=lambda: results.append(waits.wait(job.id, 20, read)))
        first.start()
        time.sleep(0.3)  # the first wait holds the only slot
        with pytest.raises(TooManyWaits, match="MAX_STATUS_WAITS"):
            waits.wait(job.id, 5, read)
        assert waits.wait(job.id, 0, read).status is JobStatus.QUEUED  # no wait: no slot
        _finish(worker_store, job)
        first.join(timeout=10)
        assert [r.status for r in results] == [JobStatus.COMPLETED]
        # The slot is free again, and a finished job never needs one.
        assert waits.wait(job.id, 5, read).status is JobStatus.COMPLETED
    finally:
        waits.close()


def test_no_waits_allowed_means_every_wait_is_refused(
    pgbouncer: Database, schema: str, store: JobStore
) -> None:
    waits = JobWaits(None, schema, max_waits=0, max_seconds=30)
    job, _ = store.create(REQUEST)
    with pytest.raises(TooManyWaits):
        waits.wait(job.id, 1, _reader(pgbouncer, schema, job.id))


def test_a_lost_listener_reconnects_and_waits_meanwhile_still_see_finishes(
    postgres: Database, pgbouncer: Database, schema: str, store: JobStore, worker_store: JobStore
) -> None:
    waits = JobWaits(postgres.dsn, schema, max_waits=4, max_seconds=30)
    channel = finished_channel(schema)
    try:
        first, _ = store.create(REQUEST)
        finisher = _later(0.5, lambda: _finish(worker_store, first))
        assert waits.wait(first.id, 5, _reader(pgbouncer, schema, first.id)).finished
        finisher.join()
        assert waits.listening
        with psycopg.connect(postgres.dsn, autocommit=True) as admin:
            # The server ends the listener's session, as a restart or a failover would.
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = %s",
                [f'LISTEN "{channel}"'],
            ).fetchall()
        assert ended == [(True,)]
        second, _ = store.create(REQUEST)
        finisher = _later(1.5, lambda: _finish(worker_store, second))
        seen = waits.wait(second.id, 20, _reader(pgbouncer, schema, second.id))
        finisher.join()
        assert seen.status is JobStatus.COMPLETED
        deadline = time.monotonic() + 10
        while not waits.listening and time.monotonic() < deadline:
            time.sleep(0.1)
        assert waits.listening  # back, on a new connection
    finally:
        waits.close()
