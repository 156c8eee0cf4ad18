"""`otel-worker migrate`, `doctor` and `sweep` against a real database."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from importlib import resources

import numpy as np
import pytest

from shared import cli, locations, migrate
from shared.config import JobSettings
from shared.devstack import free_ports
from shared.jobs import JobRequest, JobStore
from shared.points import Points
from tests.conftest import Database


@pytest.fixture
def use_database(monkeypatch: pytest.MonkeyPatch, scratch_database: Database) -> Database:
    """Point the settings at a database of this test's own, with a unique jobs schema."""
    monkeypatch.setenv("DATABASE_URL", scratch_database.url)
    monkeypatch.setenv("JOBS_SCHEMA", f"jobs_{uuid.uuid4().hex[:8]}")
    return scratch_database


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_migrate_then_describe(use_database: Database, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "migrate")
    assert code == 0
    assert "applied 0001_jobs.sql" in out
    code, out, _ = _run(capsys, "migrate")
    assert (code, out.strip().endswith("is up to date")) == (0, True)
    code, out, _ = _run(capsys, "migrate", "--describe")
    assert code == 0
    folder = resources.files("shared") / "migrations"
    assert out == (folder / migrate.EXPECTED_SCHEMA_FILE).read_text()


def test_migrate_refuses_an_edited_history(
    use_database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, "migrate")[0] == 0
    schema = os.environ["JOBS_SCHEMA"]
    with use_database.connect() as conn:
        conn.execute(f"UPDATE {schema}.schema_migrations SET checksum = 'edited'")
    code, _, err = _run(capsys, "migrate")
    assert code == 1
    assert "changed after it was applied" in err


def test_doctor_from_nothing_to_healthy(
    use_database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "doctor")
    assert code == 1
    assert "public.locations: MISSING" in out
    assert "0 of 1 migration(s) applied" in out
    assert "pending (run `otel-worker migrate`): 0001_jobs" in out

    count = 2_000
    points = Points.from_columns(
        ["phone"],
        device=np.zeros(count),
        timestamp=1_714_557_600_000_000 + np.arange(count) * 10_000_000,
        lat=np.full(count, 40.7),
        lon=np.full(count, -74.0),
    )
    with use_database.connect() as conn:
        locations.write_points(conn, points)
        conn.execute(f"DROP INDEX public.{locations.INDEX_NAME}")
    code, out, _ = _run(capsys, "doctor")
    assert code == 1
    assert 'index on (device_id, "timestamp"): MISSING' in out
    assert f"    {locations.create_index_statement()};" in out
    assert "Seq Scan" in out

    with use_database.connect() as conn:
        conn.execute(locations.create_index_statement().encode())
    _run(capsys, "migrate")
    code, out, _ = _run(capsys, "doctor")
    assert code == 0, out
    assert f"present ({locations.INDEX_NAME})" in out
    assert "query plans for device 'phone', 2024-05-01 to 2024-05-02 (UTC)" in out
    assert "matches expected_schema.txt" in out


def test_sweep_prints_what_it_did_and_lists_unpublished_jobs(
    use_database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, "migrate")[0] == 0
    with use_database.connect() as conn:
        store = JobStore(conn, JobSettings(), schema=os.environ["JOBS_SCHEMA"])
        job, _ = store.create(
            JobRequest(date_from=dt.date(2024, 1, 1), date_to=dt.date(2024, 1, 1), timezone="UTC")
        )
    code, out, _ = _run(capsys, "sweep", "--limit", "10")
    assert code == 0
    assert "re-queued 0 job(s)" in out
    assert "1 queued job(s) need publishing; no publisher is configured" in out
    assert str(job.id) in out
    assert "pruned 0 finished job(s)" in out


def test_an_unreachable_database_exits_3_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (port,) = free_ports(1)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{port}/owntracks")
    monkeypatch.setenv("DB_STARTUP_RETRY_SECONDS", "0")
    for command in ("migrate", "doctor", "sweep", "seed --days 1"):
        code, _, err = _run(capsys, *command.split())
        assert code == cli.EXIT_UNAVAILABLE
        assert f"cannot connect to PostgreSQL at 127.0.0.1:{port}/owntracks" in err


def test_bad_settings_exit_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOBS_SCHEMA", "Not An Identifier")
    code, _, err = _run(capsys, "migrate")
    assert code == 2
    assert "JOBS_SCHEMA" in err
    monkeypatch.setenv("JOBS_SCHEMA", "otel_worker")
    code, out, _ = _run(capsys, "config", "database", "jobs")
    assert code == 0
    assert "JOBS_SCHEMA = otel_worker" in out
    assert "JOB_REPUBLISH_SECONDS = 120" in out
