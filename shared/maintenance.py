"""Maintenance wired to its dependencies: migrations and the sweep, as `otel-worker
migrate`, `otel-worker sweep`, the dev supervisor and the demo run them.

The sweep talks only to PostgreSQL and the broker, so running it wakes no function
unless a job needs its `job.queued` event again.
"""

from __future__ import annotations

from shared import telemetry
from shared.config import DatabaseSettings, EventSettings, JobSettings
from shared.db import Connection, connect
from shared.events import Publisher
from shared.jobs import Job, JobStore, Publish, SweepReport
from shared.migrate import Migration, migrate
from shared.submission import queued_event


def migrate_jobs(settings: DatabaseSettings) -> list[Migration]:
    """Apply the pending migrations of the jobs schema; the ones applied."""
    with connect(settings) as conn:
        return migrate(conn, settings.jobs_schema)


def queued_publisher(events: EventSettings) -> Publish | None:
    """Publishes a job's `job.queued` to K_SINK; None when no sink is set (the sweep then
    only lists the jobs that need it)."""
    if events.k_sink is None:
        return None
    source = f"{events.event_source.rstrip('/')}/sweep"
    publisher = Publisher(
        str(events.k_sink), attempts=events.publish_attempts, timeout=events.publish_timeout_seconds
    )

    def publish(job: Job) -> None:
        publisher.publish(queued_event(job, source))

    return publish


def sweep(
    conn: Connection,
    database: DatabaseSettings,
    jobs: JobSettings,
    events: EventSettings,
    limit: int = 1000,
) -> SweepReport:
    """One sweep over `conn`, publishing to K_SINK."""
    store = JobStore(conn, jobs, schema=database.jobs_schema)
    report = store.sweep(queued_publisher(events), limit=limit)
    telemetry.record_queue(*store.queue_stats())
    return report


def sweep_once(database: DatabaseSettings, jobs: JobSettings, events: EventSettings) -> SweepReport:
    """One sweep on a connection of its own (the dev supervisor's periodic run)."""
    with connect(database) as conn:
        return sweep(conn, database, jobs, events)
