"""Submitting a request against the real jobs store: what the caller gets back when the
settings change between deliveries, and when the database fails after the publish."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest

from shared import migrate
from shared.config import AnalysisSettings, DatabaseSettings, JobSettings
from shared.contracts import DistanceRequested, Requester
from shared.db import DatabaseUnavailable, LazyPool
from shared.dev.stack import free_ports
from shared.events import Publisher
from shared.jobs import IdempotencyConflict, Job, JobStore
from shared.submission import RequestError, Submission, submit
from tests.conftest import Database, RecordingServer

REQUEST = DistanceRequested(date=dt.date(2024, 3, 9), device_id="phone1")
SCHEMA = "otel_worker"


@pytest.fixture
def database(scratch_database: Database) -> Database:
    with scratch_database.connect() as conn:
        migrate.migrate(conn, SCHEMA)
    return scratch_database


@pytest.fixture
def pool(database: Database) -> Iterator[LazyPool]:
    lazy = LazyPool(DatabaseSettings(database_url=database.url, db_startup_retry_seconds=0))
    yield lazy
    lazy.close()


@pytest.fixture
def sink() -> Iterator[RecordingServer]:
    server = RecordingServer().start()
    yield server
    server.stop()


def _submission(
    pool: LazyPool, sink: RecordingServer, limits: JobSettings | None = None, **analysis: object
) -> Submission:
    return Submission(
        jobs=JobStore(pool.connection, JobSettings(), schema=SCHEMA),
        publisher=Publisher(sink.url, attempts=1),
        analysis=AnalysisSettings(**analysis),  # type: ignore[arg-type]
        limits=limits or JobSettings(),
        source="/tests/submission",
    )


def test_a_redelivery_after_a_settings_change_gets_the_first_job(
    pool: LazyPool, sink: RecordingServer
) -> None:
    requester = Requester(source="/home-assistant", id=str(uuid.uuid4()))

    def deliver(max_accuracy_m: float) -> tuple[Job, bool]:
        submission = _submission(pool, sink, max_accuracy_m=max_accuracy_m)
        return submit(
            submission, REQUEST, requester=requester, idempotency_key=None, traceparent=None
        )

    first, created = deliver(200.0)
    assert created
    again, created = deliver(150.0)
    assert (again.id, created) == (first.id, False)
    assert again.parameters["max_accuracy_m"] == 200.0  # what the first submission captured


def test_a_database_failure_after_the_publish_still_answers_the_created_job(
    database: Database, pool: LazyPool, sink: RecordingServer
) -> None:
    def cut_the_submitters_connections() -> None:
        # What a PgBouncer restart or a failover does between the publish and the mark.
        with database.connect() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

    sink.on_receive = cut_the_submitters_connections
    job, created = submit(
        _submission(pool, sink),
        REQUEST,
        requester=None,
        idempotency_key="published-then-cut",
        traceparent=None,
    )
    assert created
    assert [r["headers"]["ce-subject"] for r in sink.received] == [str(job.id)]
    with database.connect() as conn:
        row = conn.execute(
            f"SELECT status, published_at FROM {SCHEMA}.jobs WHERE id = %s", [job.id]
        ).fetchone()
    assert row == ("queued", None)  # unmarked: the sweep may announce it once more


def test_the_same_key_for_another_time_zone_is_another_request(
    pool: LazyPool, sink: RecordingServer
) -> None:
    """A request that names no time zone asks for the home zone: under a key already
    used for an explicit other zone it is refused, not given that zone's job."""
    keyed = REQUEST.model_copy(update={"idempotency_key": "zones"})
    submission = _submission(pool, sink, home_timezone="America/New_York")
    london, created = submit(
        submission,
        keyed.model_copy(update={"timezone": "Europe/London"}),
        requester=None,
        idempotency_key=None,
        traceparent=None,
    )
    assert created
    with pytest.raises(IdempotencyConflict, match=str(london.id)):
        submit(submission, keyed, requester=None, idempotency_key=None, traceparent=None)


def test_a_redelivery_after_max_range_days_was_lowered_gets_the_first_job(
    pool: LazyPool, sink: RecordingServer
) -> None:
    week = DistanceRequested(
        date=dt.date(2024, 3, 1), end_date=dt.date(2024, 3, 7), idempotency_key="a-week"
    )

    def deliver(request: DistanceRequested, max_days: int) -> tuple[Job, bool]:
        return submit(
            _submission(pool, sink, JobSettings(max_range_days=max_days)),
            request,
            requester=None,
            idempotency_key=None,
            traceparent=None,
        )

    first, created = deliver(week, 31)
    assert created
    again, created = deliver(week, 3)
    assert (again.id, created) == (first.id, False)
    # The same range under a new key, or another range under the old key, meets today's
    # limit.
    for request in (
        week.model_copy(update={"idempotency_key": "another-week"}),
        week.model_copy(update={"date": dt.date(2024, 3, 2)}),
    ):
        with pytest.raises(
            RequestError, match=r"end_date: the range is \d+ days; at most MAX_RANGE_DAYS \(3\)"
        ):
            deliver(request, 3)

    # Whether a redelivery beyond today's limit was accepted before needs the jobs table:
    # while it is down the answer is "retry", not a refusal that would dead-letter it.
    (port,) = free_ports(1)
    down = LazyPool(
        DatabaseSettings(
            database_url=f"postgresql://postgres@127.0.0.1:{port}/gone",
            db_startup_retry_seconds=0,
        )
    )
    try:
        submission = _submission(pool, sink, JobSettings(max_range_days=3))
        unreachable = replace(
            submission, jobs=JobStore(down.connection, JobSettings(), schema=SCHEMA)
        )
        with pytest.raises(DatabaseUnavailable):
            submit(unreachable, week, requester=None, idempotency_key=None, traceparent=None)
    finally:
        down.close()
