"""Migrations of the jobs schema: idempotent, safe concurrently (through PgBouncer), no drift."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from shared import migrate
from tests.conftest import Database


@pytest.fixture
def schema(pgbouncer: Database) -> Iterator[str]:
    """A schema name of this test's own, dropped afterwards."""
    name = f"jobs_{uuid.uuid4().hex[:10]}"
    yield name
    with pgbouncer.connect() as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def test_migrations_are_numbered_from_one_each_once() -> None:
    migrations = migrate.available()
    versions = [m.version for m in migrations]
    assert versions[0] == 1
    assert versions == sorted(set(versions))
    assert migrations[0].name == "jobs"
    assert len(migrations[0].checksum) == 64


def test_migrate_applies_once_and_then_nothing(pgbouncer: Database, schema: str) -> None:
    with pgbouncer.connect() as conn:
        assert migrate.describe_schema(conn, schema) == ""
        assert migrate.status(conn, schema).pending == tuple(migrate.available())
        applied = migrate.migrate(conn, schema)
        assert [m.version for m in applied] == [m.version for m in migrate.available()]
        assert migrate.migrate(conn, schema) == []
        status = migrate.status(conn, schema)
    assert status.up_to_date
    assert status.applied == tuple(m.version for m in migrate.available())


def test_the_migrated_schema_is_the_committed_one(pgbouncer: Database, schema: str) -> None:
    with pgbouncer.connect() as conn:
        migrate.migrate(conn, schema)
        actual = migrate.describe_schema(conn, schema)
    difference = migrate.schema_difference(migrate.expected_schema(), actual)
    assert not difference, (
        f"the migrations no longer produce {migrate.EXPECTED_SCHEMA_FILE}; if that is "
        f"intended, regenerate it with `otel-worker migrate --describe`:\n{difference}"
    )


def test_the_description_does_not_depend_on_the_schema_name(
    pgbouncer: Database, schema: str
) -> None:
    other = f"{schema}_b"
    try:
        with pgbouncer.connect() as conn:
            migrate.migrate(conn, schema)
            migrate.migrate(conn, other)
            first = migrate.describe_schema(conn, schema)
            assert first == migrate.describe_schema(conn, other)
    finally:
        with pgbouncer.connect() as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {other} CASCADE")
    assert schema not in first


def test_several_migrations_at_once_apply_each_file_once(pgbouncer: Database, schema: str) -> None:
    runners = 8
    barrier = threading.Barrier(runners)
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with pgbouncer.connect() as conn:
                barrier.wait()
                applied.append([m.version for m in migrate.migrate(conn, schema)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    everything = [m.version for m in migrate.available()]
    assert sorted(applied, key=len) == [[]] * (runners - 1) + [everything]
    with pgbouncer.connect() as conn:
        assert migrate.status(conn, schema).up_to_date


def test_drift_and_a_changed_history_are_reported(pgbouncer: Database, schema: str) -> None:
    with pgbouncer.connect() as conn:
        migrate.migrate(conn, schema)
        conn.execute(f"ALTER TABLE {schema}.jobs ADD COLUMN surprise integer")
        status = migrate.status(conn, schema)
        assert not status.up_to_date
        assert "+  column surprise integer" in status.problems[0]

        conn.execute(f"UPDATE {schema}.schema_migrations SET checksum = 'edited'")
        with pytest.raises(migrate.MigrationError, match="changed after it was applied"):
            migrate.migrate(conn, schema)
        conn.execute(
            f"INSERT INTO {schema}.schema_migrations (version, name, checksum)"
            " VALUES (9999, 'future', 'x')"
        )
        status = migrate.status(conn, schema)
        assert any("9999 is applied but unknown" in problem for problem in status.problems)
        assert any("changed after it was applied" in problem for problem in status.problems)


def test_a_failing_migration_applies_nothing(pgbouncer: Database, schema: str) -> None:
    with pgbouncer.connect() as conn:
        # A table in the way makes the first migration fail inside the transaction.
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.jobs (id int)")
        with pytest.raises(psycopg.errors.DuplicateTable):
            migrate.migrate(conn, schema)
        recorded = conn.execute(
            "SELECT to_regclass(%s)", [f"{schema}.schema_migrations"]
        ).fetchone()
    assert recorded == (None,)
