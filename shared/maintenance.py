"""Maintenance wired to its dependencies: migrations and the sweep, as `otel-worker
migrate`, `otel-worker sweep`, the dev supervisor and the demo run them.

The sweep talks only to PostgreSQL, the broker and the object store, so running it wakes
no function unless a job needs its `job.queued` event again. Jobs it fails (out of
attempts) are announced with `job.failed`, as compute announces the ones it finishes (an
announcement a broker outage stopped is sent by a later sweep: the outcome outbox); the
objects of the jobs it prunes are removed with them, except one a remaining job names.
"""

from __future__ import annotations

import datetime as dt

from shared import telemetry
from shared.config import DatabaseSettings, EventSettings, JobSettings
from shared.db import Connection, connect
from shared.events import Publisher
from shared.job_view import outcome_event
from shared.jobs import Job, JobStore, Publish, SweepReport
from shared.migrate import Migration, migrate
from shared.storage import ObjectStore, StorageUnavailable, result_keys
from shared.submission import queued_event


def migrate_jobs(settings: DatabaseSettings) -> list[Migration]:
    """Apply the pending migrations of the jobs schema; the ones applied."""
    with connect(settings) as conn:
        return migrate(conn, settings.jobs_schema, settings.db_service_role)


def _publisher(events: EventSettings) -> Publisher | None:
    """The broker at K_SINK; None when no sink is set (the sweep then only lists the jobs
    that need their event)."""
    if events.k_sink is None:
        return None
    return Publisher(
        str(events.k_sink), attempts=events.publish_attempts, timeout=events.publish_timeout_seconds
    )


def _queued(publisher: Publisher, source: str) -> Publish:
    """Publishes a job's `job.queued` event."""

    def publish(job: Job) -> None:
        publisher.publish(queued_event(job, source))

    return publish


def _failed(publisher: Publisher, source: str) -> Publish:
    """Publishes a failed job's `job.failed` event (the outcome outbox's sender)."""

    def announce(job: Job) -> None:
        publisher.publish(outcome_event(job, source, job.traceparent))

    return announce


REMOVE_BATCH = 1000
"""Keys per delete request (the most S3 takes in one)."""


def _remove_objects(store: JobStore, objects: ObjectStore, report: SweepReport) -> None:
    """Remove every object the pruned jobs' attempts may have written, except those a
    remaining job still names (an object several jobs share). A failure is reported; the
    bucket's expiry rule removes what is left."""
    keys = [
        key
        for job in report.pruned_jobs
        for attempt in range(1, job.attempts + 1)
        for key in result_keys(job.id, attempt, job.date_from, job.date_to, job.device_id).every()
    ]
    for start in range(0, len(keys), REMOVE_BATCH):
        batch = keys[start : start + REMOVE_BATCH]
        named = store.named_keys(batch)
        batch = [key for key in batch if key not in named]
        try:
            objects.remove(batch)
        except StorageUnavailable as exc:
            report.remove_failures.append(str(exc))
            return
        report.objects_removed += len(batch)


def sweep(
    conn: Connection,
    database: DatabaseSettings,
    jobs: JobSettings,
    events: EventSettings,
    limit: int = 1000,
    *,
    objects: ObjectStore | None = None,
    now: dt.datetime | None = None,
) -> SweepReport:
    """One sweep over `conn`, publishing to K_SINK and removing the pruned jobs' objects
    from `objects` (None: left to the bucket's expiry rule). `now`: the instant ages are
    judged against (default: the database's clock)."""
    store = JobStore(conn, jobs, schema=database.jobs_schema)
    publisher = _publisher(events)
    source = f"{events.event_source.rstrip('/')}/sweep"
    if publisher is None:
        report = store.sweep(None, limit=limit, now=now)
    else:
        report = store.sweep(
            _queued(publisher, source), announce=_failed(publisher, source), limit=limit, now=now
        )
    if objects is not None and report.pruned_jobs:
        _remove_objects(store, objects, report)
    if report.failed:  # finished jobs are counted by outcome, wherever they finish
        telemetry.instruments().jobs.add(len(report.failed), {"outcome": "failed"})
    telemetry.record_queue(*store.queue_stats())
    return report


def sweep_once(database: DatabaseSettings, jobs: JobSettings, events: EventSettings) -> SweepReport:
    """One sweep on a connection of its own (the dev supervisor's periodic run)."""
    with connect(database) as conn:
        return sweep(conn, database, jobs, events)
