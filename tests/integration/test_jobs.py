"""The jobs store against the real server, through PgBouncer in transaction pooling mode."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from shared import db, migrate
from shared.config import DatabaseSettings, JobSettings
from shared.jobs import (
    MAX_LIST_OFFSET,
    ClaimResult,
    IdempotencyConflict,
    Job,
    JobRequest,
    JobStatus,
    JobStore,
    LeaseLost,
    NotCancellable,
    default_idempotency_key,
)
from tests.conftest import Database

REQUEST = JobRequest(
    date_from=dt.date(2024, 3, 9),
    date_to=dt.date(2024, 3, 10),
    device_id="phone",
    timezone="America/New_York",
    parameters={"away_threshold_km": 0.5, "max_accuracy_m": 200},
)
SETTINGS = JobSettings(
    job_lease_seconds=30,
    job_max_attempts=3,
    job_retention_days=30,
    job_republish_seconds=120,
)


@pytest.fixture
def schema(pgbouncer: Database) -> Iterator[str]:
    """A freshly migrated jobs schema of this test's own."""
    name = f"jobs_{uuid.uuid4().hex[:10]}"
    with pgbouncer.connect() as conn:
        migrate.migrate(conn, name)
    yield name
    with pgbouncer.connect() as conn:
        conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
def conn(pgbouncer: Database) -> Iterator[psycopg.Connection[Any]]:
    with pgbouncer.connect() as connection:
        yield connection


@pytest.fixture
def store(conn: psycopg.Connection[Any], schema: str) -> JobStore:
    return JobStore(conn, SETTINGS, schema=schema)


def _run_together(count: int, work: Callable[[int], object]) -> list[object]:
    """Run `work(i)` in `count` threads released together; re-raise the first error."""
    results: list[object] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = work(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def _lease(store: JobStore, job_id: uuid.UUID, worker: str = "w", **options: Any) -> Job:
    """Claim `job_id`, which must succeed; the job as claimed, with its lease token."""
    outcome = store.claim(job_id, worker, **options)
    assert outcome.result is ClaimResult.CLAIMED
    assert outcome.job is not None
    assert outcome.job.lease_token is not None
    return outcome.job


def _set(conn: psycopg.Connection[Any], schema: str, job_id: uuid.UUID, assignments: str) -> None:
    """Backdate or otherwise edit a job row directly (the tests' time machine)."""
    conn.execute(f"UPDATE {schema}.jobs SET {assignments} WHERE id = %s", [job_id])


# --- create -----------------------------------------------------------------------------


def test_create_is_idempotent_on_the_key(store: JobStore) -> None:
    job, created = store.create(
        REQUEST, requester_source="/api", requester_id="evt-1", traceparent="00-ab-cd-01"
    )
    assert created
    assert job.status is JobStatus.QUEUED
    assert job.asks_as(REQUEST)
    assert job.parameters == REQUEST.parameters
    assert job.idempotency_key == default_idempotency_key("/api", "evt-1")
    assert (job.attempts, job.max_attempts) == (0, SETTINGS.job_max_attempts)
    assert job.traceparent == "00-ab-cd-01"
    assert job.published_at is None
    again, created = store.create(REQUEST, requester_source="/api", requester_id="evt-1")
    assert not created
    assert again == job
    assert store.get(job.id) == job
    assert store.get(uuid.uuid4()) is None


def test_the_same_key_with_another_request_is_a_conflict(store: JobStore) -> None:
    job, _ = store.create(REQUEST, idempotency_key="k")
    other = REQUEST.model_copy(update={"device_id": "tablet"})
    with pytest.raises(IdempotencyConflict) as caught:
        store.create(other, idempotency_key="k")
    assert caught.value.job.id == job.id
    with pytest.raises(ValueError, match="longer than"):
        store.create(REQUEST, idempotency_key="x" * 1001)


def test_the_same_key_after_a_settings_change_returns_the_first_job(store: JobStore) -> None:
    # A redelivery after MAX_ACCURACY_M changed: the caller asked for the same thing.
    job, _ = store.create(REQUEST, idempotency_key="k")
    stricter = {**REQUEST.parameters, "max_accuracy_m": 50}
    changed = REQUEST.model_copy(update={"parameters": stricter})
    again, created = store.create(changed, idempotency_key="k")
    assert (again.id, created) == (job.id, False)
    assert again.parameters == REQUEST.parameters


def test_the_store_wants_autocommit(pgbouncer: Database, schema: str) -> None:
    with (
        psycopg.connect(pgbouncer.url, prepare_threshold=None) as plain,
        pytest.raises(ValueError, match="autocommit"),
    ):
        JobStore(plain, SETTINGS, schema=schema)


def test_requests_without_a_key_are_not_deduplicated(store: JobStore) -> None:
    first, _ = store.create(REQUEST)
    second, created = store.create(REQUEST)
    assert created
    assert first.id != second.id


def test_a_request_is_validated() -> None:
    with pytest.raises(ValueError, match="after date_to"):
        JobRequest(date_from=dt.date(2024, 1, 2), date_to=dt.date(2024, 1, 1), timezone="UTC")
    stored = JobRequest(
        date_from=dt.date(2024, 1, 1),
        date_to=dt.date(2024, 1, 1),
        timezone="UTC",
        parameters={"radii": (0.3, 0.5)},
    )
    assert stored.parameters == {"radii": [0.3, 0.5]}  # as jsonb gives it back


def test_one_hundred_concurrent_creates_with_one_key_make_one_job(
    pgbouncer: Database, schema: str
) -> None:
    clients = 100
    connections = [pgbouncer.connect() for _ in range(clients)]
    barrier = threading.Barrier(clients)

    def create(index: int) -> tuple[Job, bool]:
        store = JobStore(connections[index], SETTINGS, schema=schema)
        barrier.wait()
        return store.create(REQUEST, requester_source="/ingress", requester_id="same")

    try:
        answers = _run_together(clients, create)
    finally:
        for connection in connections:
            connection.close()
    first = answers[0][0]  # type: ignore[index]
    assert all(answer[0] == first for answer in answers)  # type: ignore[index]
    assert sum(bool(answer[1]) for answer in answers) == 1  # type: ignore[index]
    with pgbouncer.connect() as conn:
        assert conn.execute(f"SELECT count(*) FROM {schema}.jobs").fetchone() == (1,)


def test_the_store_borrows_pooled_connections(pgbouncer: Database, schema: str) -> None:
    pool = db.LazyPool(DatabaseSettings(database_url=pgbouncer.url, db_pool_max_size=2))
    try:
        store = JobStore(pool.connection, SETTINGS, schema=schema)
        job, created = store.create(REQUEST, idempotency_key="pooled")
        lease = _lease(store, job.id, "w")
        done = store.complete(job.id, lease.lease_token, result={"ok": True})
    finally:
        pool.close()
    assert created
    assert done.status is JobStatus.COMPLETED


# --- claim, complete, fail, release -------------------------------------------------------


def test_claim_outcomes(store: JobStore, conn: psycopg.Connection[Any], schema: str) -> None:
    job, _ = store.create(REQUEST)
    claimed = store.claim(job.id, "worker-a")
    assert claimed.result is ClaimResult.CLAIMED
    assert claimed.job is not None
    lease = claimed.job
    assert lease.status is JobStatus.PROCESSING
    assert lease.attempts == 1
    assert lease.claimed_by == "worker-a"
    assert lease.lease_token is not None
    assert lease.lease_expires_at is not None
    assert lease.started_at is not None
    assert 29 < (lease.lease_expires_at - lease.started_at).total_seconds() <= 30

    busy = store.claim(job.id, "worker-b")
    assert busy.result is ClaimResult.BUSY
    assert busy.job is not None
    assert busy.job.lease_token == lease.lease_token  # untouched

    done = store.complete(
        job.id,
        lease.lease_token,
        result={"points": 3},
        csv_key="jobs/x/distance.csv",
        summary_key="jobs/x/summary.json",
        csv_bytes=123,
        csv_sha256="ab" * 32,
    )
    assert done.status is JobStatus.COMPLETED
    assert done.completed_at is not None
    assert (done.result, done.csv_bytes, done.lease_token) == ({"points": 3}, 123, None)
    assert store.claim(job.id, "worker-b").result is ClaimResult.FINISHED
    assert store.claim(uuid.uuid4(), "worker-b") == store.claim(uuid.uuid4(), "worker-b")
    assert store.claim(uuid.uuid4(), "worker-b").result is ClaimResult.NOT_FOUND

    # A processing job whose lease expired is claimed again, with a new token.
    other, _ = store.create(REQUEST)
    first = _lease(store, other.id, "worker-a")
    _set(conn, schema, other.id, "lease_expires_at = now() - interval '1 second'")
    second = _lease(store, other.id, "worker-b", lease_seconds=60)
    assert second.attempts == 2
    assert second.lease_token != first.lease_token
    assert second.claimed_by == "worker-b"


def test_a_stale_lease_holder_changes_nothing(
    store: JobStore, conn: psycopg.Connection[Any], schema: str
) -> None:
    job, _ = store.create(REQUEST)
    stale = _lease(store, job.id, "slow-worker")
    _set(conn, schema, job.id, "lease_expires_at = now() - interval '1 second'")
    fresh = _lease(store, job.id, "new-worker")
    before = store.get(job.id)

    with pytest.raises(LeaseLost, match="processing") as caught:
        store.complete(job.id, stale.lease_token, result={"stale": True})
    assert caught.value.status is JobStatus.PROCESSING
    with pytest.raises(LeaseLost):
        store.fail(job.id, stale.lease_token, "stale failure")
    with pytest.raises(LeaseLost):
        store.release(job.id, stale.lease_token, "stale error")
    assert store.get(job.id) == before

    done = store.complete(job.id, fresh.lease_token, result={"fresh": True})
    assert done.result == {"fresh": True}
    with pytest.raises(LeaseLost, match="completed"):
        store.complete(job.id, fresh.lease_token, result={"again": True})
    with pytest.raises(LeaseLost, match="no longer exists"):
        store.fail(uuid.uuid4(), fresh.lease_token, "nope")


def test_fail_is_final_and_release_requeues_until_the_attempts_are_spent(
    store: JobStore, conn: psycopg.Connection[Any], schema: str
) -> None:
    job, _ = store.create(REQUEST)
    lease = _lease(store, job.id, "w")
    failed = store.fail(job.id, lease.lease_token, "no such device")
    assert (failed.status, failed.error_message) == (JobStatus.FAILED, "no such device")
    assert failed.completed_at is not None

    job, _ = store.create(REQUEST)
    for attempt in range(1, SETTINGS.job_max_attempts + 1):
        lease = _lease(store, job.id, "w")
        assert lease.attempts == attempt
        released = store.release(job.id, lease.lease_token, f"storage down ({attempt})")
        if attempt < SETTINGS.job_max_attempts:
            assert released.status is JobStatus.QUEUED
            assert released.error_message == f"storage down ({attempt})"
            assert released.lease_token is None
            assert released.completed_at is None
    assert released.status is JobStatus.FAILED
    assert released.error_message == "gave up after 3 attempt(s): storage down (3)"
    assert store.claim(job.id, "w").result is ClaimResult.FINISHED


def test_a_claim_fails_a_job_whose_last_attempt_died(
    store: JobStore, conn: psycopg.Connection[Any], schema: str
) -> None:
    job, _ = store.create(REQUEST)
    store.claim(job.id, "w1")
    _set(conn, schema, job.id, "attempts = max_attempts, lease_expires_at = now() - interval '1 s'")
    outcome = store.claim(job.id, "w2")
    assert outcome.result is ClaimResult.EXHAUSTED
    assert outcome.job is not None
    assert outcome.job.status is JobStatus.FAILED
    assert outcome.job.error_message == (
        "gave up after 3 attempt(s): the lease of the last attempt (worker w1) expired"
    )
    # While the last attempt's lease is live, it is simply busy.
    other, _ = store.create(REQUEST)
    store.claim(other.id, "w1")
    _set(conn, schema, other.id, "attempts = max_attempts")
    assert store.claim(other.id, "w2").result is ClaimResult.BUSY


def test_twenty_claimers_claim_each_of_a_thousand_jobs_exactly_once(
    pgbouncer: Database, schema: str
) -> None:
    jobs, claimers, overlap = 1000, 20, 3
    with pgbouncer.connect() as conn:
        ids = [
            row[0]
            for row in conn.execute(
                f"INSERT INTO {schema}.jobs (date_from, date_to, timezone, idempotency_key,"
                " max_attempts) SELECT '2024-01-01', '2024-01-01', 'UTC', 'k' || g, 3"
                " FROM generate_series(1, %s) g RETURNING id",
                [jobs],
            )
        ]
    # Every job is tried by `overlap` claimers, in a different order by each.
    share = jobs * overlap // claimers
    connections = [pgbouncer.connect() for _ in range(claimers)]
    barrier = threading.Barrier(claimers)

    def claim_many(index: int) -> list[uuid.UUID]:
        store = JobStore(connections[index], SETTINGS, schema=schema)
        mine = [ids[(index * jobs // claimers + k) % jobs] for k in range(share)]
        random.Random(index).shuffle(mine)
        barrier.wait()
        return [
            job_id
            for job_id in mine
            if store.claim(job_id, f"claimer-{index}").result is ClaimResult.CLAIMED
        ]

    try:
        results = _run_together(claimers, claim_many)
    finally:
        for connection in connections:
            connection.close()
    claimed = [job_id for result in results for job_id in result]  # type: ignore[attr-defined]
    assert len(claimed) == jobs
    assert set(claimed) == set(ids)
    with pgbouncer.connect() as conn:
        assert conn.execute(
            f"SELECT count(*), min(attempts), max(attempts) FROM {schema}.jobs"
            " WHERE status = 'processing'"
        ).fetchone() == (jobs, 1, 1)


# --- list ---------------------------------------------------------------------------------


def test_list_filters_orders_pages_and_counts(
    store: JobStore, conn: psycopg.Connection[Any], schema: str
) -> None:
    made = []
    for day, device in [(1, "phone"), (2, "phone"), (3, "tablet"), (5, None)]:
        request = REQUEST.model_copy(
            update={
                "date_from": dt.date(2024, 4, day),
                "date_to": dt.date(2024, 4, day + 1),
                "device_id": device,
            }
        )
        made.append(store.create(request)[0])
    lease = _lease(store, made[1].id, "w")
    store.complete(made[1].id, lease.lease_token, result={})

    everything, total = store.list_jobs()
    assert [job.id for job in everything] == [job.id for job in reversed(made)]  # newest first
    assert total == 4
    page, total = store.list_jobs(limit=2, offset=1)
    assert [job.id for job in page] == [made[2].id, made[1].id]
    assert total == 4
    beyond, total = store.list_jobs(offset=10)
    assert (beyond, total) == ([], 4)

    on_day_2, total = store.list_jobs(date=dt.date(2024, 4, 2))
    assert {job.id for job in on_day_2} == {made[0].id, made[1].id}
    assert total == 2
    phones, total = store.list_jobs(device_id="phone", status=JobStatus.QUEUED)
    assert [job.id for job in phones] == [made[0].id]
    assert total == 1
    nothing, total = store.list_jobs(status=JobStatus.FAILED)
    assert (nothing, total) == ([], 0)

    with pytest.raises(ValueError, match="negative"):
        store.list_jobs(limit=-1)
    with pytest.raises(ValueError, match="negative"):
        store.list_jobs(offset=-1)
    assert store.list_jobs(offset=MAX_LIST_OFFSET) == ([], len(made))
    with pytest.raises(ValueError, match="offset must be at most 2147483647"):
        store.list_jobs(offset=MAX_LIST_OFFSET + 1)  # a bigint would be out of range higher up


def test_list_limit_defaults_to_50_and_is_capped_at_500(
    store: JobStore, conn: psycopg.Connection[Any], schema: str
) -> None:
    conn.execute(
        f"INSERT INTO {schema}.jobs (date_from, date_to, timezone, idempotency_key,"
        " max_attempts) SELECT '2024-01-01', '2024-01-01', 'UTC', 'k' || g, 3"
        " FROM generate_series(1, 501) g"
    )
    assert [len(store.list_jobs(limit=n)[0]) for n in (0, 7, 1000)] == [50, 7, 500]
    assert store.list_jobs(limit=1000)[1] == 501


# --- sweep --------------------------------------------------------------------------------


class Publisher:
    """A publisher recording what it sent, failing for the jobs named in `refuse`."""

    def __init__(self, refuse: set[uuid.UUID] | None = None, pause: float = 0.0) -> None:
        self.sent: list[uuid.UUID] = []
        self.refuse = refuse or set()
        self.pause = pause
        self.lock = threading.Lock()

    def __call__(self, job: Job) -> None:
        time.sleep(self.pause)
        if job.id in self.refuse:
            raise ConnectionError("broker unreachable")
        with self.lock:
            self.sent.append(job.id)


def test_sweep_on_backdated_rows(
    store: JobStore, conn: psycopg.Connection[Any], schema: str
) -> None:
    def new(state: str = "") -> uuid.UUID:
        job, _ = store.create(REQUEST)
        if state:
            _set(conn, schema, job.id, state)
        return job.id

    def claimed(worker: str, state: str = "") -> uuid.UUID:
        job_id = new()
        store.claim(job_id, worker)
        if state:
            _set(conn, schema, job_id, state)
        return job_id

    expired = "lease_expires_at = now() - interval '1 second'"
    old = "now() - interval '10 minutes'"
    dead_lease = claimed("w-dead", expired)
    live_lease = claimed("w-live")
    out_of_attempts = claimed("w-last", f"{expired}, attempts = max_attempts")
    never_published = new()
    refused = new()
    published_now = new("published_at = now()")
    published_long_ago = new(f"published_at = {old}, updated_at = {old}")
    retried_lately = new(f"published_at = {old}")  # released to the queue a moment ago
    finished = "status = 'failed', completed_at = now() - interval '{} days'"
    old_failure = new(finished.format(31))
    recent_failure = new(finished.format(29))

    publisher = Publisher(refuse={refused})
    report = store.sweep(publisher)

    assert [job.id for job in report.failed] == [out_of_attempts]
    assert report.failed[0].error_message == (
        "gave up after 3 attempt(s): the lease of the last attempt (worker w-last) expired"
    )
    assert [job.id for job in report.requeued] == [dead_lease]
    requeued = store.get(dead_lease)
    assert requeued is not None
    assert requeued.status is JobStatus.QUEUED
    assert requeued.error_message == "attempt 1 lost its lease (worker w-dead stopped answering)"
    assert requeued.published_at is not None  # announced again in the same sweep
    live = store.get(live_lease)
    assert live is not None
    assert live.status is JobStatus.PROCESSING

    expected = {dead_lease, never_published, published_long_ago}
    assert set(publisher.sent) == expected
    assert {job.id for job in report.republished} == expected
    assert [(job.id, error) for job, error in report.publish_failures] == [
        (refused, "ConnectionError: broker unreachable")
    ]
    refused_job = store.get(refused)
    assert refused_job is not None
    assert refused_job.published_at is None  # still due: the next sweep tries again
    for job_id in (published_now, retried_lately):
        job = store.get(job_id)
        assert job is not None
        assert job.id not in publisher.sent

    assert report.pruned == 1
    assert store.get(old_failure) is None
    assert store.get(recent_failure) is not None
    lines = "\n".join(report.lines())
    assert "failed 1 job(s)" in lines
    assert "could not publish 1 job(s)" in lines
    assert "pruned 1 finished job(s)" in lines

    # A second pass finds only what the first could not do.
    again = store.sweep(Publisher())
    assert [job.id for job in again.republished] == [refused]
    assert (again.failed, again.requeued, again.pruned) == ([], [], 0)


def test_sweep_without_a_publisher_lists_the_jobs_and_leaves_them(store: JobStore) -> None:
    job, _ = store.create(REQUEST)
    report = store.sweep(None)
    assert [listed.id for listed in report.unpublished] == [job.id]
    assert report.republished == []
    stored = store.get(job.id)
    assert stored is not None
    assert stored.published_at is None
    assert "left unpublished" in "\n".join(report.lines())


def test_sweep_judges_ages_against_the_given_instant(store: JobStore) -> None:
    job, _ = store.create(REQUEST)
    store.mark_published(job.id)
    assert store.sweep(Publisher()).republished == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=3)
    publisher = Publisher()
    assert [j.id for j in store.sweep(publisher, now=later).republished] == [job.id]
    assert publisher.sent == [job.id]


def test_concurrent_sweeps_publish_each_job_once(pgbouncer: Database, schema: str) -> None:
    with pgbouncer.connect() as conn:
        store = JobStore(conn, SETTINGS, schema=schema)
        made = {store.create(REQUEST)[0].id for _ in range(12)}
    publisher = Publisher(pause=0.02)
    sweepers = 3
    connections = [pgbouncer.connect() for _ in range(sweepers)]
    barrier = threading.Barrier(sweepers)

    def sweep(index: int) -> object:
        sweeper = JobStore(connections[index], SETTINGS, schema=schema)
        barrier.wait()
        return sweeper.sweep(publisher)

    try:
        _run_together(sweepers, sweep)
    finally:
        for connection in connections:
            connection.close()
    assert sorted(publisher.sent) == sorted(made)


# --- cancel -----------------------------------------------------------------------------


def test_a_cancelled_queued_job_is_never_claimed_or_republished(store: JobStore) -> None:
    job, _ = store.create(REQUEST, idempotency_key="cancel-queued")
    cancelled = store.cancel(job.id)
    assert cancelled is not None
    assert (cancelled.status, cancelled.attempts) == (JobStatus.CANCELLED, 0)
    assert cancelled.completed_at is not None
    assert cancelled.error_message == "cancelled at the caller's request"
    claim = store.claim(job.id, "w")
    assert claim.result is ClaimResult.FINISHED
    report = store.sweep(lambda _job: None)
    assert report.republished == report.failed == report.requeued == []
    current = store.get(job.id)
    assert current is not None
    assert (current.status, current.attempts) == (JobStatus.CANCELLED, 0)


def test_a_cancelled_running_attempt_loses_its_fences(store: JobStore) -> None:
    job, _ = store.create(REQUEST, idempotency_key="cancel-running")
    token = _lease(store, job.id).lease_token
    assert token is not None
    store.holds(job.id, token)  # still its own
    assert store.cancel(job.id) is not None
    with pytest.raises(LeaseLost) as fence:
        store.holds(job.id, token)
    assert fence.value.status is JobStatus.CANCELLED
    with pytest.raises(LeaseLost):
        store.complete(job.id, token, result={"path_km": 1.0})
    with pytest.raises(LeaseLost):
        store.release(job.id, token, "database down")
    current = store.get(job.id)
    assert current is not None
    assert (current.status, current.result) == (JobStatus.CANCELLED, None)


def test_cancelling_a_finished_or_unknown_job_is_refused(store: JobStore) -> None:
    assert store.cancel(uuid.uuid4()) is None
    job, _ = store.create(REQUEST, idempotency_key="cancel-finished")
    token = _lease(store, job.id).lease_token
    assert token is not None
    store.complete(job.id, token, result={})
    with pytest.raises(NotCancellable) as refused:
        store.cancel(job.id)
    assert refused.value.job.status is JobStatus.COMPLETED
    assert "already completed" in str(refused.value)
    other, _ = store.create(REQUEST, idempotency_key="cancel-twice")
    store.cancel(other.id)
    with pytest.raises(NotCancellable, match="already cancelled"):
        store.cancel(other.id)


def test_cancelled_jobs_are_pruned_after_the_retention(
    store: JobStore, conn: psycopg.Connection[Any], schema: str
) -> None:
    job, _ = store.create(REQUEST, idempotency_key="cancel-prune")
    store.cancel(job.id)
    _set(conn, schema, job.id, "completed_at = now() - interval '31 days'")
    assert store.sweep(None).pruned == 1


def test_a_cancel_racing_the_completion_has_exactly_one_winner(
    pgbouncer: Database, schema: str
) -> None:
    rounds = 30
    connections = [pgbouncer.connect() for _ in range(2)]
    setup = JobStore(connections[0], SETTINGS, schema=schema)
    stores = [JobStore(c, SETTINGS, schema=schema) for c in connections]
    winners: list[str] = []
    barrier = threading.Barrier(2)  # reused each round: both start each race together
    try:
        for round_ in range(rounds):
            job, _ = setup.create(REQUEST, idempotency_key=f"race-{round_}")
            token = _lease(setup, job.id).lease_token
            assert token is not None

            def attempt(index: int, job_id: uuid.UUID = job.id, token: uuid.UUID = token) -> str:
                barrier.wait()
                try:
                    if index == 0:
                        stores[0].complete(job_id, token, result={"round": 1})
                        return "completed"
                    stores[1].cancel(job_id)
                    return "cancelled"
                except (LeaseLost, NotCancellable):
                    return "lost"

            results = _run_together(2, attempt)
            won = [result for result in results if result != "lost"]
            assert len(won) == 1, results
            final = setup.get(job.id)
            assert final is not None
            assert final.status.value == won[0]
            assert (final.result is not None) == (won[0] == "completed")
            winners.append(str(won[0]))
    finally:
        for connection in connections:
            connection.close()
    assert set(winners) <= {"completed", "cancelled"}


def test_a_completed_jobs_phases_add_up_to_its_processing_time(
    store: JobStore, conn: psycopg.Connection[Any], schema: str
) -> None:
    job, _ = store.create(REQUEST)
    claimed = _lease(store, job.id, "worker-a")
    assert claimed.lease_token is not None
    # The attempt started 2 s ago on the database's clock; it measured 1.5 s of work after
    # its claim, and a claim of 900 ms (most of it before started_at: a slow connect).
    _set(conn, schema, job.id, "started_at = now() - interval '2 seconds'")
    measured = {"claim": 900.0, "read": 1000.0, "uploads": 500.0}
    done = store.complete(job.id, claimed.lease_token, result={"points": 3}, timings_ms=measured)
    assert done.result is not None
    assert done.started_at is not None
    assert done.completed_at is not None
    timings = done.result["timings_ms"]
    interval = (done.completed_at - done.started_at).total_seconds() * 1000
    assert abs(sum(timings.values()) - interval) <= 0.05
    assert (timings["read"], timings["uploads"]) == (1000.0, 500.0)
    # The claim counts inside the interval only: what is left is the completing statement.
    assert 0 <= timings["complete"] < 50
    assert 450 < timings["claim"] < 550
    assert done.result["points"] == 3
