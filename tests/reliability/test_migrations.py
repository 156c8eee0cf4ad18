"""Upgrading the jobs schema from every earlier version, with jobs in it, gives exactly the
schema of a fresh database (the committed expected schema) and keeps the jobs; applying
the migrations again changes nothing. Written over the migrations folder: a new migration
is covered without touching this file."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from shared import migrate
from tests.conftest import Database
from tests.reliability.conftest import Figures

EVERY = migrate.available()


@pytest.fixture
def schema(pgbouncer: Database) -> Iterator[str]:
    name = f"upgrade_{uuid.uuid4().hex[:10]}"
    yield name
    with pgbouncer.connect() as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def _add_jobs(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> int:
    """A queued and a completed job, written with the columns of the first version."""
    conn.execute(
        f"INSERT INTO {schema}.jobs (date_from, date_to, timezone, idempotency_key,"
        " max_attempts, status, completed_at) VALUES"
        " ('2024-03-01', '2024-03-02', 'UTC', 'old-queued', 3, 'queued', NULL),"
        " ('2024-03-03', '2024-03-03', 'UTC', 'old-done', 3, 'completed', now())"
    )
    return 2


@pytest.mark.parametrize("start", range(len(EVERY)), ids=lambda k: f"from-{k:04d}")
def test_upgrading_from_version(
    pgbouncer: Database, schema: str, start: int, monkeypatch: pytest.MonkeyPatch, score: Figures
) -> None:
    jobs = 0
    with pgbouncer.connect() as conn:
        if start:
            # The code of version `start`: it knows only the migrations up to there.
            monkeypatch.setattr(migrate, "available", lambda: EVERY[:start])
            assert [m.version for m in migrate.migrate(conn, schema)] == list(range(1, start + 1))
            monkeypatch.undo()
            jobs = _add_jobs(conn, schema)
        applied = migrate.migrate(conn, schema)
        assert [m.version for m in applied] == [m.version for m in EVERY[start:]]
        upgraded = migrate.describe_schema(conn, schema)
        assert migrate.migrate(conn, schema) == []  # twice: nothing more to do
        assert migrate.describe_schema(conn, schema) == upgraded
        assert migrate.status(conn, schema).up_to_date
        kept = conn.execute(f"SELECT count(*) FROM {schema}.jobs").fetchone()
    difference = migrate.schema_difference(migrate.expected_schema(), upgraded)
    assert not difference, f"upgraded from {start:04d}, the schema differs:\n{difference}"
    assert kept == (jobs,)
    score.jobs, score.lost = jobs, jobs - int(kept[0])
    score.note = f"{len(applied)} migration(s) applied on top of {start}"
