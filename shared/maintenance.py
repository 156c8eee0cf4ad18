"""Maintenance wired to its dependencies: migrations and the sweep, as `otel-worker
migrate`, `otel-worker sweep`, the dev supervisor and the demo run them.

The sweep talks only to PostgreSQL and the broker, so running it wakes no function
unless a job needs its `job.queued` event again.
"""

from __future__ import annotations

from shared.config import DatabaseSettings, EventSettings, JobSettings
from shared.db import connect
from shared.events import Publisher
from shared.jobs import Job, JobStore, SweepReport
from shared.migrate import Migration, migrate
from shared.submission import queued_event


def migrate_jobs(settings: DatabaseSettings) -> list[Migration]:
    """Apply the pending migrations of the jobs schema; the ones applied."""
    with connect(settings) as conn:
        return migrate(conn, settings.jobs_schema)


def sweep_once(database: DatabaseSettings, jobs: JobSettings, events: EventSettings) -> SweepReport:
    """One sweep; queued jobs needing their event are published to K_SINK, or only
    listed when no sink is set."""
    source = f"{events.event_source.rstrip('/')}/sweep"
    publish = None
    if events.k_sink is not None:
        publisher = Publisher(
            str(events.k_sink),
            attempts=events.publish_attempts,
            timeout=events.publish_timeout_seconds,
        )

        def publish(job: Job) -> None:
            publisher.publish(queued_event(job, source))

    with connect(database) as conn:
        return JobStore(conn, jobs, schema=database.jobs_schema).sweep(publish)
