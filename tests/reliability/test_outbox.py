"""The outcome outbox: a job the sweep fails while the broker is down is announced with
job.failed by a later sweep once the broker is back, exactly once, as a queued job's
job.queued is."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from shared import config, events, maintenance, migrate
from shared.db import connect
from shared.jobs import JobRequest, JobStore
from tests.conftest import Database, RecordingServer
from tests.reliability.conftest import Figures


@pytest.fixture
def settings(pgbouncer: Database) -> Iterator[config.DatabaseSettings]:
    schema = f"outbox_{uuid.uuid4().hex[:10]}"
    yield config.DatabaseSettings(database_url=SecretStr(pgbouncer.dsn), jobs_schema=schema)
    with pgbouncer.connect() as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_a_failure_announcement_survives_a_broker_outage(
    settings: config.DatabaseSettings, score: Figures
) -> None:
    broker = RecordingServer().start()
    sink = config.EventSettings(
        k_sink=broker.url,
        publish_attempts=1,
        publish_timeout_seconds=1,
    )
    jobs = config.JobSettings()
    with connect(settings) as conn:
        migrate.migrate(conn, settings.jobs_schema)
        store = JobStore(conn, jobs, schema=settings.jobs_schema)
        created = [
            store.create(
                JobRequest(date_from=dt.date(2024, 3, day), date_to=dt.date(2024, 3, day),
                           timezone="UTC")
            )[0].id
            for day in (1, 2, 3)
        ]  # fmt: skip
        # Out of attempts: the next sweep fails them.
        conn.execute(f"UPDATE {settings.jobs_schema}.jobs SET attempts = max_attempts")
        broker.stop()
        down = maintenance.sweep(conn, settings, jobs, sink)
        assert sorted(job.id for job in down.failed) == sorted(created)
        assert (down.failures_announced, len(down.announce_failures)) == (0, 3)
        broker.start()  # back, on the same address
        back = maintenance.sweep(conn, settings, jobs, sink)
        again = maintenance.sweep(conn, settings, jobs, sink)
    broker.stop()
    assert back.failed == []  # failed already: only their announcements were owed
    assert back.failures_announced == 3
    assert (again.failures_announced, again.announce_failures) == (0, [])
    sent = [events.parse(r["headers"], r["body"]) for r in broker.received]
    assert sorted((e["type"], e["subject"]) for e in sent) == sorted(
        (events.JOB_FAILED, str(job_id)) for job_id in created
    )
    score.jobs = len(created)
    score.lost = len(created) - len({e["subject"] for e in sent})
    score.duplicates = len(sent) - len({e["subject"] for e in sent})
    score.note = "job.failed sent after the outage, once each"
