"""The jobs store: job rows in PostgreSQL, their leases, outcomes and maintenance.

A job is created `queued` (idempotently, by key), announced by a `job.queued` event (the
row's `published_at` is the outbox mark), claimed by one worker at a time with a lease and
a fresh lease token, and finished `completed` or `failed` only by the holder of the current
token. The periodic sweep re-announces jobs whose event may have been lost, re-queues jobs
whose worker died, fails jobs out of attempts and prunes old finished jobs.

Every operation is one statement or one short transaction on an autocommit connection and
keeps no session state, so the store works through PgBouncer in transaction pooling mode.
Concurrency is settled by row locks and the unique idempotency key, never by the caller.
Times come from the database's clock, so every pod judges leases alike.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, LiteralString

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.config import JobSettings
from shared.contracts import INT32_MAX
from shared.db import Connection, ConnectionSource
from shared.errors import OtelWorkerError

DEFAULT_LIST_LIMIT: Final = 50
MAX_LIST_LIMIT: Final = 500
MAX_LIST_OFFSET: Final = INT32_MAX  # what the proto carries; PostgreSQL's bigint ends not far above
MAX_KEY_LENGTH: Final = 1000  # a btree entry must stay well below its ~2.7 kB limit


class JobStatus(enum.StrEnum):
    """Where a job is in its life; `completed`, `failed` and `cancelled` are final.

    Each member says who moves a job out of it, and where to.
    """

    QUEUED = "queued"
    """Created by submit (`create`), or given back after a lost or failed attempt. Leaves
    when compute claims it for an attempt (`claim`: processing, or failed when no attempts
    are left), when the sweep fails it for having no attempts left, or when a caller
    cancels it (`cancel`: cancelled)."""
    PROCESSING = "processing"
    """Claimed by one compute attempt, under a lease. Leaves when that attempt finishes it
    (`complete`: completed; `fail`: failed; `release` after a transient failure: queued
    again, or failed with no attempts left), when another claim takes over an expired
    lease (processing again, a new attempt), or when the sweep re-queues an expired lease
    (queued) or fails it with no attempts left, or when a caller cancels it (`cancel`:
    cancelled)."""
    COMPLETED = "completed"
    """Final: the result objects exist. Only the sweep removes it, JOB_RETENTION_DAYS after
    it finished."""
    FAILED = "failed"
    """Final, with a message saying why. Only the sweep removes it, JOB_RETENTION_DAYS after
    it finished."""
    CANCELLED = "cancelled"
    """Final: cancelled by a caller through submit (`cancel`) while queued or processing, with
    CANCELLED_MESSAGE; a running attempt has lost its lease and removes what it uploaded.
    Only the sweep removes it, JOB_RETENTION_DAYS after it finished."""


FINISHED: Final = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
CANCELLED_MESSAGE: Final = "cancelled at the caller's request"
"""The error message of a cancelled job: what a client that knows only completed and
failed shows."""


class JobRequest(BaseModel):
    """What was asked: inclusive local dates, a device (None = all), time zone, parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    date_from: dt.date
    date_to: dt.date
    device_id: str | None = Field(default=None, min_length=1, max_length=100)
    timezone: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    """The analysis parameters captured at submission, so a retry computes the same thing."""

    @field_validator("parameters")
    @classmethod
    def _json(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Stored as jsonb: keep exactly what will be read back (tuples become lists...).
        normalised: dict[str, Any] = json.loads(json.dumps(value))
        return normalised

    @model_validator(mode="after")
    def _ordered(self) -> JobRequest:
        if self.date_from > self.date_to:
            raise ValueError(f"date_from {self.date_from} is after date_to {self.date_to}")
        return self

    @property
    def days(self) -> int:
        """How many local days the request covers."""
        return (self.date_to - self.date_from).days + 1

    @property
    def writes_gpx(self) -> bool:
        """Whether the job's results include a GPX file: one-day jobs do; a range is
        assembled from kept device-days, which keep no tracks to write one from."""
        return self.days == 1

    def asks_as(self, other: JobRequest) -> bool:
        """Whether `other` asks for the same days, device and time zone.

        The parameters are left out: they are the settings captured at submission, not
        something the caller asked for, so a redelivery after a settings change is the
        same request (and its job keeps the parameters of the first submission).
        """
        return (self.date_from, self.date_to, self.device_id, self.timezone) == (
            other.date_from,
            other.date_to,
            other.device_id,
            other.timezone,
        )


class Job(JobRequest):
    """A job row: its request plus its lifecycle."""

    id: uuid.UUID
    status: JobStatus
    idempotency_key: str
    requester_source: str | None
    requester_id: str | None
    attempts: int
    max_attempts: int
    lease_token: uuid.UUID | None
    lease_expires_at: dt.datetime | None
    claimed_by: str | None
    queued_at: dt.datetime
    started_at: dt.datetime | None
    """When the latest attempt started."""
    completed_at: dt.datetime | None
    """When the job finished: completed, failed or cancelled."""
    updated_at: dt.datetime
    result: dict[str, Any] | None
    csv_key: str | None
    summary_key: str | None
    csv_bytes: int | None
    csv_sha256: str | None
    error_message: str | None
    """Why the job failed; while it is retried, the last attempt's error."""
    traceparent: str | None
    published_at: dt.datetime | None
    """When the current queued state was last announced (NULL: not yet)."""
    superseded_by: uuid.UUID | None = None
    """The job that replaced this completed one after late fixes moved its figures."""
    supersedes: uuid.UUID | None = None
    """The completed job this one replaces (same request, figures recomputed)."""
    figures_checked_at: dt.datetime | None = None
    """When the late-fix check last found this job's figures still true."""

    @property
    def finished(self) -> bool:
        """Completed, failed or cancelled: nothing more will happen to it."""
        return self.status in FINISHED


_COLUMNS: Final = sql.SQL(", ").join(sql.Identifier(name) for name in Job.model_fields)


class IdempotencyConflict(OtelWorkerError):
    """The idempotency key already names a job with a different request (answer 409/400)."""

    def __init__(self, key: str, job: Job) -> None:
        super().__init__(
            f"idempotency key {key!r} already names job {job.id} with a different request"
        )
        self.job = job


class LeaseLost(OtelWorkerError):
    """The lease token is no longer the job's: another attempt owns it, or it was re-queued.

    The stale holder changed nothing and must drop its work.
    """

    def __init__(self, job_id: uuid.UUID, status: JobStatus | None) -> None:
        now = f"it is now {status}" if status else "it no longer exists"
        super().__init__(f"job {job_id}: the lease token is no longer valid ({now})")
        self.job_id = job_id
        self.status = status


class NotCancellable(OtelWorkerError):
    """The job has already finished (completed, failed or cancelled): too late to cancel."""

    def __init__(self, job: Job) -> None:
        super().__init__(
            f"job {job.id} is already {job.status.value}: only a queued or processing job"
            " can be cancelled"
        )
        self.job = job


class PendingWorkFull(OtelWorkerError):
    """Admission refused a new job: the pending work (device-days of queued and processing
    jobs) plus the job's days would exceed the cap."""

    def __init__(self, pending: int, days: int, cap: int) -> None:
        super().__init__(f"{pending} device-days pending + {days} > {cap}")
        self.pending = pending
        self.days = days
        self.cap = cap


class ClaimResult(enum.StrEnum):
    """How a claim ended, and what the compute function answers the broker."""

    CLAIMED = "claimed"
    """Work on it now (with `outcome.job.lease_token`)."""
    BUSY = "busy"
    """A live lease is held by another attempt: answer 409 so the broker retries later."""
    FINISHED = "finished"
    """Already completed, failed or cancelled: answer 2xx and do nothing (a duplicate
    delivery, or a job cancelled before it ran)."""
    EXHAUSTED = "exhausted"
    """No attempts were left: the claim marked it failed. Emit job.failed, answer 2xx."""
    NOT_FOUND = "not_found"
    """No such job."""


@dataclass(frozen=True)
class ClaimOutcome:
    """The result of `JobStore.claim` and the job as it now stands (None if not found)."""

    result: ClaimResult
    job: Job | None


Publish = Callable[[Job], None]
"""Sends a job's job.queued event; raises when it could not."""


@dataclass
class SweepReport:
    """What one sweep did."""

    failed: list[Job] = field(default_factory=list)
    requeued: list[Job] = field(default_factory=list)
    republished: list[Job] = field(default_factory=list)
    publish_failures: list[tuple[Job, str]] = field(default_factory=list)
    unpublished: list[Job] = field(default_factory=list)
    """Jobs that need their event sent, left as they are because no publisher was given."""
    pruned: int = 0
    pruned_jobs: list[Job] = field(default_factory=list)
    """The jobs pruned, whose objects the caller removes (`shared.maintenance`)."""
    objects_removed: int = 0
    """Objects of pruned jobs removed (none a remaining job names)."""
    remove_failures: list[str] = field(default_factory=list)
    """Why objects of pruned jobs could not be removed (the bucket's expiry rule will)."""
    failures_announced: int = 0
    """How many job.failed events were sent: for `failed`, and for jobs an earlier sweep
    failed but could not announce."""
    announce_failures: list[tuple[Job, str]] = field(default_factory=list)
    """Jobs whose job.failed event could not be sent (they stay failed and owed it: a
    later sweep sends it)."""

    def lines(self) -> list[str]:
        """One human-readable line per action, and one per job acted on."""
        lines = [f"failed {len(self.failed)} job(s) out of attempts"]
        lines += [f"  {job.id}: {job.error_message}" for job in self.failed]
        if self.failures_announced:
            lines.append(f"  job.failed sent for {self.failures_announced} of them")
        if self.announce_failures:
            lines.append(
                f"could not send job.failed for {len(self.announce_failures)} job(s)"
                " (they stay failed; the next sweep sends it)"
            )
            lines += [f"  {job.id}: {error}" for job, error in self.announce_failures]
        lines.append(f"re-queued {len(self.requeued)} job(s) whose lease expired")
        lines += [f"  {job.id}: {job.error_message}" for job in self.requeued]
        lines.append(f"re-published {len(self.republished)} queued job(s)")
        lines += [f"  {job.id}" for job in self.republished]
        if self.publish_failures:
            lines.append(f"could not publish {len(self.publish_failures)} job(s) (kept queued)")
            lines += [f"  {job.id}: {error}" for job, error in self.publish_failures]
        if self.unpublished:
            lines.append(
                f"{len(self.unpublished)} queued job(s) need publishing; no publisher is "
                "configured, so they were left unpublished"
            )
            lines += [
                f"  {job.id} (queued {job.queued_at:%Y-%m-%d %H:%M:%S%z})"
                for job in self.unpublished
            ]
        lines.append(f"pruned {self.pruned} finished job(s) past the retention")
        if self.objects_removed:
            lines.append(f"  removed {self.objects_removed} object(s) of theirs")
        lines += [f"could not remove their objects: {error}" for error in self.remove_failures]
        return lines


def effective_limit(limit: int) -> int:
    """The page size a listing applies: 0 means DEFAULT_LIST_LIMIT, at most MAX_LIST_LIMIT."""
    return min(limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)


def default_idempotency_key(source: str | None, event_id: str | None) -> str:
    """The key of a request without an explicit one: its event's (source, id), else random.

    A random key makes the request not deduplicated (e.g. a plain POST without a key).
    CloudEvents bound neither attribute, so a pair too long to index is replaced by its
    SHA-256, which deduplicates as well.
    """
    if source is not None and event_id is not None:
        key = json.dumps([source, event_id], separators=(",", ":"))
        if len(key) > MAX_KEY_LENGTH:
            key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        return key
    return f"random:{uuid.uuid4()}"


_GAVE_UP: Final = "'gave up after ' || attempts || ' attempt(s): ' || "
# Why a job with no attempts left is failed by a claim or the sweep.
_EXHAUSTED_REASON: Final = (
    _GAVE_UP + "CASE WHEN status = 'processing' THEN 'the lease of the last attempt (worker '"
    " || coalesce(claimed_by, 'unknown') || ') expired' "
    "ELSE coalesce(error_message, 'no attempts left') END"
)
_FAIL_EXHAUSTED: Final = (
    "status = 'failed', error_message = " + _EXHAUSTED_REASON + ", completed_at = now(), "
    "updated_at = now(), lease_token = NULL, lease_expires_at = NULL"
)
_EXHAUSTED: Final = (
    "status IN ('queued', 'processing') AND attempts >= max_attempts"
    " AND (status = 'queued' OR lease_expires_at <= {now})"
)
_ASYNC_COMMIT: Final = (
    "WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true)) "
)
"""Commits the statement it prefixes (which must add `FROM async_commit`) without waiting
for the WAL flush; transaction-scoped, so nothing lingers on a pooled connection. Only for
writes whose loss in a server crash is harmless: a lost claim leaves the job queued and the
attempt's fenced completion is refused; a lost publish mark makes the sweep publish again.
Creating and finishing a job stay durable."""
_AT: Final = "coalesce(%(now)s::timestamptz, now())"
"""The sweep's reference instant: the caller's `now`, else the database clock."""


class JobStore:
    """Jobs in `<schema>.jobs` (see `shared.migrate`), reached through `connection`.

    `connection` is either one autocommit connection (a CLI, a test) or a source that
    lends one per operation, such as `LazyPool.connection`. `settings` gives the default
    lease, the attempts a new job gets, the republish delay and the retention.
    """

    def __init__(
        self, connection: Connection | ConnectionSource, settings: JobSettings, *, schema: str
    ) -> None:
        if isinstance(connection, psycopg.Connection):
            if not connection.autocommit:
                # Each operation must commit on its own, or others would never see it.
                raise ValueError("JobStore needs an autocommit connection")
            single = connection
            self._connection: ConnectionSource = lambda: contextlib.nullcontext(single)
        else:
            self._connection = connection
        self.settings = settings
        self.schema = schema
        self._names = {
            "jobs": sql.Identifier(schema, "jobs"),
            "columns": _COLUMNS,
            "schema": sql.Identifier(schema),
        }
        self._statements: dict[tuple[str, ...], bytes] = {}

    @property
    def connection(self) -> ConnectionSource:
        """Lends a connection to the jobs schema (what the kept device-days use too)."""
        return self._connection

    def _sql(self, template: LiteralString, **parts: LiteralString) -> bytes:
        """`template` with {jobs}, {columns} and the SQL `parts` filled in, composed once."""
        key = (template, *(f"{name}={part}" for name, part in sorted(parts.items())))
        query = self._statements.get(key)
        if query is None:
            snippets = {name: sql.SQL(part) for name, part in parts.items()}
            query = sql.SQL(template).format(**self._names, **snippets).as_bytes(None)
            self._statements[key] = query
        return query

    def _one(self, conn: Connection, query: bytes, params: dict[str, Any]) -> Job | None:
        with conn.cursor(row_factory=dict_row) as cursor:
            row = cursor.execute(query, params).fetchone()
        return Job.model_validate(row) if row else None

    def _by_id(self, conn: Connection, job_id: uuid.UUID) -> Job | None:
        query = self._sql("SELECT {columns} FROM {jobs} WHERE id = %(id)s")
        return self._one(conn, query, {"id": job_id})

    def _by_key(self, conn: Connection, key: str) -> Job | None:
        query = self._sql("SELECT {columns} FROM {jobs} WHERE idempotency_key = %(key)s")
        return self._one(conn, query, {"key": key})

    def _all(self, conn: Connection, query: bytes, params: dict[str, Any]) -> list[Job]:
        with conn.cursor(row_factory=dict_row) as cursor:
            return [Job.model_validate(row) for row in cursor.execute(query, params)]

    def _call(
        self, conn: Connection, function: LiteralString, outs: LiteralString, params: dict[str, Any]
    ) -> tuple[dict[str, Any], Job | None]:
        """Call the transition `function` of migration 0004 with `params` (its arguments,
        in order); its OUT values named in `outs`, and the job it returns (or None)."""
        arguments: LiteralString = ", ".join(f"%({name})s" for name in params)
        query = self._sql(
            "SELECT " + outs + ", (r.job).* FROM {schema}." + function + "(" + arguments + ") r"
        )
        with conn.cursor(row_factory=dict_row) as cursor:
            row = cursor.execute(query, params).fetchone()
        assert row is not None
        values = {name.strip(): row.pop(name.strip()) for name in outs.split(",")}
        if row["id"] is None:
            return values, None
        # The row type carries every column; bookkeeping ones (outcome_pending) are not the
        # job callers see.
        return values, Job.model_validate({name: row[name] for name in Job.model_fields})

    # --- creating and reading -----------------------------------------------------------

    def create(
        self,
        request: JobRequest,
        *,
        idempotency_key: str | None = None,
        requester_source: str | None = None,
        requester_id: str | None = None,
        traceparent: str | None = None,
        max_pending: int | None = None,
    ) -> tuple[Job, bool]:
        """Create a queued job, or return the one its idempotency key already names.

        Returns `(job, created)`. The key defaults to `default_idempotency_key(source, id)`.
        Concurrent creates with one key make one row and all get that job. The same key
        with a request for other days, device or time zone raises `IdempotencyConflict`
        (other parameters alone do not: see `JobRequest.asks_as`); a key longer than
        `MAX_KEY_LENGTH` raises ValueError. With `max_pending` (device-days), a new job
        whose days would take the pending work above it is refused with
        `PendingWorkFull`, in the same call (a key that already names a job always gets
        it: it adds no work).
        """
        key = idempotency_key or default_idempotency_key(requester_source, requester_id)
        if len(key) > MAX_KEY_LENGTH:
            raise ValueError(f"idempotency key longer than {MAX_KEY_LENGTH} characters")
        params = {
            **request.model_dump(),
            "parameters": Jsonb(request.parameters),
            "key": key,
            "source": requester_source,
            "requester": requester_id,
            "traceparent": traceparent,
            "max_attempts": self.settings.job_max_attempts,
            "max_pending": max_pending,
        }
        with self._connection() as conn:
            outs, job = self._call(conn, "job_create", "created, pending", params)
        if job is None:
            raise PendingWorkFull(int(outs["pending"]), request.days, max_pending or 0)
        if not outs["created"] and not job.asks_as(request):
            raise IdempotencyConflict(key, job)
        return job, bool(outs["created"])

    def by_key(self, key: str) -> Job | None:
        """The job `key` names, if any."""
        with self._connection() as conn:
            return self._by_key(conn, key)

    def get(self, job_id: uuid.UUID) -> Job | None:
        """The job, or None."""
        with self._connection() as conn:
            return self._by_id(conn, job_id)

    def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        date: dt.date | None = None,
        device_id: str | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
        offset: int = 0,
    ) -> tuple[list[Job], int]:
        """A page of jobs, newest first, and the number of all jobs matching the filters.

        `date` matches jobs whose date range contains it; `device_id` matches jobs of that
        device. `limit` 0 means `DEFAULT_LIST_LIMIT` and is capped at `MAX_LIST_LIMIT`;
        a negative limit or offset, or an offset above `MAX_LIST_OFFSET`, raises
        ValueError. Page and total come from one statement, so they agree.
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        if offset > MAX_LIST_OFFSET:
            raise ValueError(f"offset must be at most {MAX_LIST_OFFSET}")
        limit = effective_limit(limit)
        where: LiteralString = "TRUE"
        if status is not None:
            where += " AND status = %(status)s"
        if date is not None:
            where += " AND date_from <= %(date)s AND date_to >= %(date)s"
        if device_id is not None:
            where += " AND device_id = %(device_id)s"
        query = self._sql(
            "SELECT {columns}, matches.total FROM"
            " (SELECT count(*) AS total FROM {jobs} WHERE {where}) matches"
            " LEFT JOIN LATERAL (SELECT {columns} FROM {jobs} WHERE {where}"
            "  ORDER BY queued_at DESC, id DESC LIMIT %(limit)s OFFSET %(offset)s) page ON TRUE",
            where=where,
        )
        params = {
            "status": status,
            "date": date,
            "device_id": device_id,
            "limit": limit,
            "offset": offset,
        }
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            rows = cursor.execute(query, params).fetchall()
        total = int(rows[0]["total"])
        jobs = [
            Job.model_validate({name: value for name, value in row.items() if name != "total"})
            for row in rows
            if row["id"] is not None
        ]
        return jobs, total

    def by_csv_name(self, name: str) -> Job | None:
        """The job whose CSV has the basename `name`, which embeds the first 8 hex digits of
        the job id (see `shared.storage.result_keys`), or None."""
        short = name.rsplit("_", 1)[-1].removesuffix(".csv")
        if len(short) != 8 or not all(c in "0123456789abcdef" for c in short):
            return None
        # A range of ids with that prefix: served by the primary key, unlike a LIKE on text.
        low = uuid.UUID(short + "0" * 24)
        high = uuid.UUID(short + "f" * 24)
        query = self._sql(
            "SELECT {columns} FROM {jobs} WHERE id BETWEEN %(low)s AND %(high)s"
            " AND csv_key LIKE %(suffix)s"
        )
        suffix = "%/" + name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        with self._connection() as conn:
            return self._one(conn, query, {"low": low, "high": high, "suffix": suffix})

    def queue_stats(self) -> tuple[int, float]:
        """How many jobs are queued, and the age in seconds of the oldest (0 when none)."""
        query = self._sql(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(queued_at)), 0)::float8"
            " FROM {jobs} WHERE status = 'queued'"
        )
        with self._connection() as conn:
            row = conn.execute(query).fetchone()
        assert row is not None
        return int(row[0]), float(row[1])

    def mark_published(self, job_id: uuid.UUID) -> None:
        """Record that the job's job.queued event was sent (the outbox mark)."""
        with self._connection() as conn:
            conn.execute(
                self._sql(
                    _ASYNC_COMMIT + "UPDATE {jobs} SET published_at = now()"
                    " FROM async_commit WHERE id = %(id)s"
                ),
                {"id": job_id},
            )

    # --- the lease ----------------------------------------------------------------------

    def claim(
        self, job_id: uuid.UUID, worker: str, lease_seconds: float | None = None
    ) -> ClaimOutcome:
        """Take the job for one attempt, under a lease with a fresh token.

        A queued job, or a processing one whose lease has expired, becomes processing with
        `attempts` + 1, a new `lease_token`, `lease_expires_at` = now + `lease_seconds`
        (default JOB_LEASE_SECONDS), `claimed_by` = `worker` and `started_at` = now:
        CLAIMED. Otherwise: BUSY (a live lease elsewhere), FINISHED (completed, failed or
        cancelled), EXHAUSTED (no attempts left: the claim fails the job with a message naming the
        attempts) or NOT_FOUND. Two claims never both succeed: the row lock orders them and
        the second sees the first's live lease.
        """
        params = {
            "id": job_id,
            "worker": worker,
            "lease": self.settings.job_lease_seconds if lease_seconds is None else lease_seconds,
        }
        with self._connection() as conn:
            outs, job = self._call(conn, "job_claim", "outcome", params)
        return ClaimOutcome(ClaimResult(outs["outcome"]), job)

    def _fenced(
        self, function: LiteralString, job_id: uuid.UUID, token: uuid.UUID, **params: Any
    ) -> Job:
        """Call a fenced transition: applied while `token` is the job's lease token, else
        `LeaseLost` naming where the job now is."""
        with self._connection() as conn:
            outs, job = self._call(conn, function, "held", {"id": job_id, "token": token, **params})
        if not outs["held"] or job is None:
            raise LeaseLost(job_id, job.status if job else None)
        return job

    def complete(
        self,
        job_id: uuid.UUID,
        token: uuid.UUID,
        *,
        result: dict[str, Any],
        csv_key: str | None = None,
        summary_key: str | None = None,
        csv_bytes: int | None = None,
        csv_sha256: str | None = None,
        timings_ms: dict[str, float] | None = None,
        rest: str = "complete",
    ) -> Job:
        """Finish the job as completed with its result and object facts; fenced by `token`.

        Accepted while `token` is the job's current lease token (even if the lease has just
        expired, as long as no one else took over); otherwise raises `LeaseLost` and
        changes nothing. Clears the error of earlier attempts.

        With `timings_ms` (the attempt's phases, in milliseconds) the result gets them as
        `timings_ms`, adding up to `completed_at - started_at`: the phases after the claim
        as measured; what that interval holds beyond them is the `claim` phase (as measured,
        at most all of it: a claim's round trip starts before `started_at`) and phase `rest`
        (the completing statement, what is left).
        """
        phases = dict(timings_ms or {})
        claim = phases.pop("claim", None)
        return self._fenced(
            "job_complete",
            job_id,
            token,
            result=Jsonb(result),
            csv_key=csv_key,
            summary_key=summary_key,
            csv_bytes=csv_bytes,
            csv_sha256=csv_sha256,
            timings=None if timings_ms is None else Jsonb(phases),
            claim=claim,
            rest=rest,
        )

    def fail(self, job_id: uuid.UUID, token: uuid.UUID, message: str) -> Job:
        """Finish the job as failed for good with `message`; fenced by `token` (`LeaseLost`)."""
        return self._fenced("job_fail", job_id, token, message=message)

    def release(self, job_id: uuid.UUID, token: uuid.UUID, error: str) -> Job:
        """Give the lease back after a transient failure; fenced by `token` (`LeaseLost`).

        With attempts left the job is queued again at once (so the broker's retry can
        claim it) with `error` recorded; otherwise it fails with a message naming the
        attempts and `error`. The returned job says which (`status`): on failed, emit
        job.failed and answer 2xx; on queued, answer 5xx so the broker retries.
        """
        return self._fenced("job_release", job_id, token, error=error)

    def holds(self, job_id: uuid.UUID, token: uuid.UUID) -> None:
        """A fence between steps of an attempt: returns while `token` is still the job's
        lease token, else raises `LeaseLost` (the job was cancelled, or taken over), so the
        attempt stops before its next costly step."""
        query = self._sql(
            "SELECT 1 FROM {jobs} WHERE id = %(id)s AND status = 'processing'"
            " AND lease_token = %(token)s"
        )
        with self._connection() as conn:
            if conn.execute(query, {"id": job_id, "token": token}).fetchone() is not None:
                return
            current = self._by_id(conn, job_id)
        raise LeaseLost(job_id, current.status if current else None)

    def extend(self, job_id: uuid.UUID, token: uuid.UUID, lease_seconds: float) -> bool:
        """Renew the lease of a processing job that `token` still holds, to `lease_seconds`
        from now (a range job waiting for its days, which keep coming in); False when the
        token no longer holds it."""
        query = self._sql(
            "UPDATE {jobs} SET lease_expires_at = now() + make_interval(secs => %(lease)s),"
            " updated_at = now() WHERE id = %(id)s AND status = 'processing'"
            " AND lease_token = %(token)s"
        )
        params = {"id": job_id, "token": token, "lease": lease_seconds}
        with self._connection() as conn:
            return conn.execute(query, params).rowcount == 1

    def cancel(self, job_id: uuid.UUID) -> Job | None:
        """Cancel a queued or processing job: it ends `cancelled` at once (a queued one is
        never claimed; a running attempt loses its lease token, so its next fence raises
        `LeaseLost` and it drops its work). Returns the job, None when there is no such job;
        raises `NotCancellable` when it had already finished. Against a completion that
        races it, the row lock orders the two: exactly one of them wins."""
        with self._connection() as conn:
            outs, job = self._call(
                conn, "job_cancel", "cancelled", {"id": job_id, "message": CANCELLED_MESSAGE}
            )
        if outs["cancelled"] or job is None:
            return job
        raise NotCancellable(job)

    # --- maintenance --------------------------------------------------------------------

    def sweep(
        self,
        publish: Publish | None,
        *,
        announce: Publish | None = None,
        now: dt.datetime | None = None,
        limit: int = 1000,
    ) -> SweepReport:
        """One maintenance pass (what the CronJob runs); safe to run concurrently with itself.

        In order, each step on at most `limit` jobs, skipping rows another session has
        locked:
        1. fail jobs with no attempts left whose lease expired (or that sit queued),
           with a message naming the attempts, each owed its job.failed (the outcome
           outbox); then `announce(job)` every job owed one, this run's and those an
           earlier run could not announce, clearing the debt once sent;
        2. re-queue processing jobs whose lease expired, recording the lost attempt and
           clearing their outbox mark so step 3 announces them;
        3. re-publish queued jobs never announced, or announced more than
           JOB_REPUBLISH_SECONDS ago and unchanged since: `publish(job)` then mark them
           published; a failure is reported and the job stays as it was. Without a
           publisher they are only listed (`unpublished`);
        4. delete finished jobs (completed, failed, cancelled) that finished more than
           JOB_RETENTION_DAYS ago.
        `now` (default: the database's clock) is the instant ages are judged against.
        """
        report = SweepReport()
        params = {
            "now": now,
            "limit": limit,
            "republish": self.settings.job_republish_seconds,
            "retention": self.settings.job_retention_days,
        }
        fail = self._sql(
            "UPDATE {jobs} SET " + _FAIL_EXHAUSTED + ", outcome_pending = true"
            " WHERE id IN (SELECT id FROM {jobs}"
            " WHERE " + _EXHAUSTED + " LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
            " RETURNING {columns}",
            now=_AT,
        )
        requeue = self._sql(
            "UPDATE {jobs} SET status = 'queued', lease_token = NULL, lease_expires_at = NULL,"
            " published_at = NULL, updated_at = now(),"
            " error_message = 'attempt ' || attempts || ' lost its lease (worker '"
            " || coalesce(claimed_by, 'unknown') || ' stopped answering)'"
            " WHERE id IN (SELECT id FROM {jobs} WHERE status = 'processing'"
            " AND lease_expires_at <= {now} AND attempts < max_attempts"
            " LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
            " RETURNING {columns}",
            now=_AT,
        )
        prune = self._sql(
            "DELETE FROM {jobs} WHERE id IN (SELECT id FROM {jobs}"
            " WHERE status IN ('completed', 'failed', 'cancelled')"
            " AND completed_at < {now} - make_interval(days => %(retention)s)"
            " LIMIT %(limit)s FOR UPDATE SKIP LOCKED) RETURNING {columns}",
            now=_AT,
        )
        with self._connection() as conn:
            report.failed = self._all(conn, fail, params)
            if announce is not None:
                self._announce(conn, announce, limit, report)
            report.requeued = self._all(conn, requeue, params)
            self._republish(conn, publish, params, report)
            report.pruned_jobs = self._all(conn, prune, params)
            report.pruned = len(report.pruned_jobs)
        return report

    def named_keys(self, keys: list[str]) -> set[str]:
        """Those of the object `keys` that a job row still names (its CSV or summary)."""
        query = self._sql(
            "SELECT csv_key FROM {jobs} WHERE csv_key = ANY(%(keys)s)"
            " UNION SELECT summary_key FROM {jobs} WHERE summary_key = ANY(%(keys)s)"
        )
        with self._connection() as conn:
            return {str(key) for (key,) in conn.execute(query, {"keys": keys})}

    def _announce(
        self, conn: Connection, announce: Publish, limit: int, report: SweepReport
    ) -> None:
        """Send the job.failed every failed job with `outcome_pending` is owed, one job per
        transaction (its row locked while it is sent, so a concurrent sweep skips it)."""
        take = self._sql(
            "SELECT {columns} FROM {jobs} WHERE outcome_pending AND id <> ALL(%(seen)s)"
            " ORDER BY completed_at LIMIT 1 FOR UPDATE SKIP LOCKED"
        )
        paid = self._sql("UPDATE {jobs} SET outcome_pending = false WHERE id = %(id)s")
        for job, failure in self._send_each(conn, take, paid, announce, {"limit": limit}):
            if failure is None:
                report.failures_announced += 1
            else:
                report.announce_failures.append((job, failure))

    def _republish(
        self,
        conn: Connection,
        publish: Publish | None,
        params: dict[str, Any],
        report: SweepReport,
    ) -> None:
        due = (
            "status = 'queued' AND id <> ALL(%(seen)s) AND (published_at IS NULL OR"
            " (published_at < {now} - make_interval(secs => %(republish)s)"
            " AND updated_at < {now} - make_interval(secs => %(republish)s)))"
        )
        if publish is None:
            listing = self._sql(
                "SELECT {columns} FROM {jobs} WHERE " + due + " ORDER BY queued_at LIMIT %(limit)s",
                now=_AT,
            )
            report.unpublished = self._all(conn, listing, {**params, "seen": []})
            return
        take = self._sql(
            "SELECT {columns} FROM {jobs} WHERE "
            + due
            + " ORDER BY queued_at LIMIT 1 FOR UPDATE SKIP LOCKED",
            now=_AT,
        )
        mark = self._sql("UPDATE {jobs} SET published_at = now() WHERE id = %(id)s")
        for job, failure in self._send_each(conn, take, mark, publish, params):
            if failure is None:
                report.republished.append(job)
            else:
                report.publish_failures.append((job, failure))

    def _send_each(
        self,
        conn: Connection,
        take: bytes,
        sent: bytes,
        send: Publish,
        params: dict[str, Any],
    ) -> Iterator[tuple[Job, str | None]]:
        """Send each job `take` finds, up to `params['limit']`, one job per transaction: its
        row stays locked while it is sent (a concurrent sweep skips it) but no longer, and
        `sent` marks it once it went. Yields each job with None, or the failure of `send`."""
        seen: list[uuid.UUID] = []
        while len(seen) < params["limit"]:
            with conn.transaction():
                job = self._one(conn, take, {**params, "seen": seen})
                if job is None:
                    return
                seen.append(job.id)
                try:
                    send(job)
                except Exception as exc:  # any failure of the caller's publisher: report it
                    yield job, f"{type(exc).__name__}: {exc}"
                    continue
                conn.execute(sent, {"id": job.id})
                yield job, None
