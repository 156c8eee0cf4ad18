"""Accepting a distance request: validate it, record the job, announce it.

The job row is the outbox: it is committed with `published_at` unset, then `job.queued`
is published; only a successful publish marks it. If the broker cannot be reached the job
stays queued and unannounced, and the sweep publishes it later, so nothing is lost.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Final
from zoneinfo import ZoneInfo

from cloudevents.http import CloudEvent

from shared import events
from shared.admission import TooManyRequests
from shared.config import AnalysisSettings, JobSettings
from shared.contracts import DistanceRequested, JobQueued, Requester
from shared.db import DatabaseUnavailable
from shared.errors import OtelWorkerError
from shared.events import Publisher, PublishError
from shared.job_view import outcome_event
from shared.jobs import (
    Job,
    JobRequest,
    JobStatus,
    JobStore,
    PendingWorkFull,
    default_idempotency_key,
)

log = logging.getLogger(__name__)


class RequestError(OtelWorkerError, ValueError):
    """A request that is well-formed but cannot be served; the message names the field."""


@dataclass(frozen=True)
class Submission:
    """What submit needs besides the request: where jobs live, how to announce them."""

    jobs: JobStore
    publisher: Publisher | None
    analysis: AnalysisSettings
    limits: JobSettings
    source: str
    max_pending: int | None = None
    """MAX_PENDING_JOBS: device-days of queued and processing work above which new jobs are
    refused for now (None: no cap)."""


PENDING_RETRY_SECONDS: Final = 30
"""The retry hint when pending work is at its cap: long enough for compute to clear some."""


def _refusal(full: PendingWorkFull) -> TooManyRequests:
    """What a caller is told when pending work is at MAX_PENDING_JOBS."""
    return TooManyRequests(
        f"{full.pending} device-days of work are pending; this request adds {full.days}, "
        f"above MAX_PENDING_JOBS ({full.cap}); retry in {PENDING_RETRY_SECONDS} s",
        retry_after=PENDING_RETRY_SECONDS,
    )


def _check_limits(request: DistanceRequested, timezone: str, limits: JobSettings) -> None:
    if request.days > limits.max_range_days:
        raise RequestError(
            f"end_date: the range is {request.days} days; at most MAX_RANGE_DAYS "
            f"({limits.max_range_days}) are allowed"
        )
    today = dt.datetime.now(ZoneInfo(timezone)).date()
    for field, day in (("date", request.date), ("end_date", request.last_date)):
        if day > today:
            raise RequestError(f"{field}: {day} is in the future (today is {today} in {timezone})")


def queued_event(job: Job, source: str) -> CloudEvent:
    """The `job.queued` event of a job, carrying the trace it was submitted in."""
    return events.new_event(
        events.JOB_QUEUED,
        JobQueued(job_id=job.id),
        source=source,
        subject=str(job.id),
        traceparent=job.traceparent,
    )


def submit(
    submission: Submission,
    request: DistanceRequested,
    *,
    requester: Requester | None,
    idempotency_key: str | None,
    traceparent: str | None,
) -> tuple[Job, bool]:
    """Record the job for `request` (or find the one its idempotency key names) and make
    sure it is announced. Returns `(job, created)`.

    Raises `RequestError` for a request beyond the limits, `IdempotencyConflict` when the
    key names a different request, `TooManyRequests` while pending work is at
    MAX_PENDING_JOBS, and `DatabaseUnavailable` when the jobs table cannot be reached. A
    broker that cannot be reached is not an error: the sweep retries.

    A redelivery gets its first job even when MAX_RANGE_DAYS was lowered below its range
    since; telling that apart needs the jobs table, so while it is down such a request is
    answered `DatabaseUnavailable` (retry) rather than refused.
    """
    key = idempotency_key or request.idempotency_key
    if key is None and requester is not None:
        key = default_idempotency_key(requester.source, requester.id)
    timezone = request.timezone or submission.analysis.home_timezone
    job_request = JobRequest(
        date_from=request.date,
        date_to=request.last_date,
        device_id=request.device_id,
        timezone=timezone,
        # Captured now so a retry computes what was asked even if the settings change.
        parameters=submission.analysis.engine_params().model_dump(mode="json"),
    )
    try:
        _check_limits(request, timezone, submission.limits)
    except RequestError:
        # Beyond today's limits, but perhaps accepted under earlier ones.
        earlier = submission.jobs.by_key(key) if key is not None else None
        if earlier is None or not earlier.asks_as(job_request):
            raise
        job, created = earlier, False
    else:
        # Admission and creation in one call: a repeat of a request already admitted is
        # always answered (it adds no work); a new one must fit under MAX_PENDING_JOBS.
        try:
            job, created = submission.jobs.create(
                job_request,
                idempotency_key=key,
                requester_source=requester.source if requester else None,
                requester_id=requester.id if requester else None,
                traceparent=traceparent,
                max_pending=submission.max_pending,
            )
        except PendingWorkFull as full:
            raise _refusal(full) from None
    if job.status == JobStatus.QUEUED and job.published_at is None:
        announce(submission, job)
    return job, created


class JobNotFound(OtelWorkerError, LookupError):
    """No job has that id."""


def cancel(submission: Submission, job_id: uuid.UUID, traceparent: str | None) -> Job:
    """Cancel a queued or processing job and announce `job.cancelled`; the cancelled job.

    Raises `JobNotFound`, `NotCancellable` (it had finished: completed, failed or already
    cancelled) or `DatabaseUnavailable`. A broker that cannot be reached is only logged:
    the job is cancelled either way, and compute answers a later delivery of its
    `job.queued` with the same event (same id) again.
    """
    job = submission.jobs.cancel(job_id)
    if job is None:
        raise JobNotFound(f"job {job_id} not found")
    if submission.publisher is not None:
        try:
            submission.publisher.publish(outcome_event(job, submission.source, traceparent))
        except PublishError as exc:
            log.warning(
                "could not publish job.cancelled", extra={"job_id": str(job.id), "error": str(exc)}
            )
    return job


def announce(submission: Submission, job: Job) -> bool:
    """Publish `job.queued` for `job` and mark it published; False if publishing has to
    wait for the sweep. A mark that fails after the publish is only logged."""
    if submission.publisher is None:
        log.warning("no K_SINK: job left for the sweep to publish", extra={"job_id": str(job.id)})
        return False
    try:
        submission.publisher.publish(queued_event(job, submission.source))
    except PublishError as exc:
        log.warning(
            "could not publish job.queued; the sweep will",
            extra={"job_id": str(job.id), "error": str(exc)},
        )
        return False
    try:
        submission.jobs.mark_published(job.id)
    except DatabaseUnavailable as exc:
        # The event is out: failing now would make a caller without a key submit a
        # duplicate job. Unmarked, the sweep at most publishes job.queued once more.
        log.warning(
            "published job.queued but could not mark it; the sweep may publish it again",
            extra={"job_id": str(job.id), "error": str(exc)},
        )
    return True
