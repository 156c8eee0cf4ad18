"""Maintenance wired to its dependencies: migrations and the sweep, as `otel-worker
migrate`, `otel-worker sweep`, the dev supervisor and the demo run them.

The sweep talks only to PostgreSQL and the broker, so running it wakes no function
unless a job needs its `job.queued` event again. Jobs it fails (out of attempts) are
announced with `job.failed`, as compute announces the ones it finishes.
"""

from __future__ import annotations

from shared import telemetry
from shared.config import DatabaseSettings, EventSettings, JobSettings
from shared.db import Connection, connect
from shared.events import Publisher, PublishError
from shared.job_view import outcome_event
from shared.jobs import Job, JobStore, Publish, SweepReport
from shared.migrate import Migration, migrate
from shared.submission import queued_event


def migrate_jobs(settings: DatabaseSettings) -> list[Migration]:
    """Apply the pending migrations of the jobs schema; the ones applied."""
    with connect(settings) as conn:
        return migrate(conn, settings.jobs_schema)


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


def _announce_failures(publisher: Publisher, source: str, report: SweepReport) -> None:
    """Send `job.failed` for the jobs the sweep failed; a failure to send is reported (the
    job stays failed either way: the table is the record, the event the notice)."""
    for job in report.failed:
        try:
            publisher.publish(outcome_event(job, source, job.traceparent))
        except PublishError as exc:
            report.announce_failures.append((job, str(exc)))
        else:
            report.failures_announced += 1


def sweep(
    conn: Connection,
    database: DatabaseSettings,
    jobs: JobSettings,
    events: EventSettings,
    limit: int = 1000,
) -> SweepReport:
    """One sweep over `conn`, publishing to K_SINK."""
    store = JobStore(conn, jobs, schema=database.jobs_schema)
    publisher = _publisher(events)
    source = f"{events.event_source.rstrip('/')}/sweep"
    if publisher is None:
        report = store.sweep(None, limit=limit)
    else:
        report = store.sweep(_queued(publisher, source), limit=limit)
        _announce_failures(publisher, source, report)
    if report.failed:  # finished jobs are counted by outcome, wherever they finish
        telemetry.instruments().jobs.add(len(report.failed), {"outcome": "failed"})
    telemetry.record_queue(*store.queue_stats())
    return report


def sweep_once(database: DatabaseSettings, jobs: JobSettings, events: EventSettings) -> SweepReport:
    """One sweep on a connection of its own (the dev supervisor's periodic run)."""
    with connect(database) as conn:
        return sweep(conn, database, jobs, events)
