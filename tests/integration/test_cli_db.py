"""`otel-worker migrate`, `doctor` and `sweep` against a real database."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from shared import cli, config, events, locations, migrate
from shared.config import JobSettings
from shared.contracts import JobOutcome
from shared.dev.stack import free_ports
from shared.engine.points import Points
from shared.jobs import JobRequest, JobStore
from tests.conftest import Database, RecordingServer


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
    assert "0 of 3 migration(s) applied" in out
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


def test_sweep_without_k_sink_lists_unpublished_jobs_and_exits_1(
    use_database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CronJob pod the SinkBinding missed fails, saying why, instead of passing silently."""
    assert _run(capsys, "migrate")[0] == 0
    with use_database.connect() as conn:
        store = JobStore(conn, JobSettings(), schema=os.environ["JOBS_SCHEMA"])
        job, _ = store.create(
            JobRequest(date_from=dt.date(2024, 1, 1), date_to=dt.date(2024, 1, 1), timezone="UTC")
        )
    code, out, err = _run(capsys, "sweep", "--limit", "10")
    assert code == 1
    assert "re-queued 0 job(s)" in out
    assert "1 queued job(s) need publishing; no publisher is configured" in out
    assert str(job.id) in out
    assert "pruned 0 finished job(s)" in out
    assert err.count("\n") == 1
    assert err.startswith("otel-worker sweep: K_SINK is not set, so 1 job(s) needing an event")


def test_sweep_without_k_sink_exits_1_for_a_job_it_fails(
    use_database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job failed out of attempts needs its job.failed event as much as a queued one."""
    assert _run(capsys, "migrate")[0] == 0
    _out_of_attempts(use_database)
    code, out, err = _run(capsys, "sweep")
    assert code == 1
    assert "failed 1 job(s) out of attempts" in out
    assert "K_SINK is not set, so 1 job(s) needing an event were not announced" in err


def test_sweep_without_k_sink_exits_0_when_nothing_needed_announcing(
    use_database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, "migrate")[0] == 0
    code, out, err = _run(capsys, "sweep")
    assert (code, err) == (0, "")
    assert "re-published 0 queued job(s)" in out


def _out_of_attempts(database: Database) -> uuid.UUID:
    """A job whose last attempt's lease expired: the sweep fails it."""
    schema = os.environ["JOBS_SCHEMA"]
    with database.connect() as conn:
        store = JobStore(conn, JobSettings(), schema=schema)
        job, _ = store.create(
            JobRequest(date_from=dt.date(2024, 1, 1), date_to=dt.date(2024, 1, 1), timezone="UTC"),
            traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        store.claim(job.id, "w-gone")
        conn.execute(
            f"UPDATE {schema}.jobs SET attempts = max_attempts, published_at = now(),"
            " lease_expires_at = now() - interval '1 second' WHERE id = %s",
            (job.id,),
        )
    return job.id


def _sweep_failing_a_job(
    database: Database,
    broker: RecordingServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[uuid.UUID, int, str]:
    """`otel-worker sweep` publishing to `broker`, over a job out of attempts: (its id,
    the exit status, what the sweep printed)."""
    assert _run(capsys, "migrate")[0] == 0
    job_id = _out_of_attempts(database)
    monkeypatch.setenv("K_SINK", broker.start().url)
    try:
        code, out, _ = _run(capsys, "sweep")
    finally:
        broker.stop()
    return job_id, code, out


def test_sweep_announces_the_jobs_it_fails(
    use_database: Database, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = RecordingServer()
    job_id, code, out = _sweep_failing_a_job(use_database, broker, capsys, monkeypatch)
    assert code == 0
    assert "failed 1 job(s) out of attempts" in out
    assert "job.failed sent for 1 of them" in out
    (sent,) = broker.received
    event = events.parse(sent["headers"], sent["body"])
    assert (event["type"], event["source"], event["subject"]) == (
        events.JOB_FAILED,
        "/otel-worker/sweep",
        str(job_id),
    )
    assert event["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    job = events.data_as(event, JobOutcome).job
    assert job.status == "failed"
    assert "gave up after 3 attempt(s)" in (job.error_message or "")


def test_sweep_that_cannot_announce_a_failure_says_so_and_exits_1(
    use_database: Database, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = RecordingServer(default=(400, {}, b"no"))  # final: not retried
    job_id, code, out = _sweep_failing_a_job(use_database, broker, capsys, monkeypatch)
    assert code == 1
    assert f"could not send job.failed for 1 job(s) (they stay failed)\n  {job_id}: " in out
    assert len(broker.received) == 1
    with use_database.connect() as conn:
        row = conn.execute(
            f"SELECT status FROM {os.environ['JOBS_SCHEMA']}.jobs WHERE id = %s", (job_id,)
        ).fetchone()
    assert row == ("failed",)


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


def test_a_missing_database_exits_2_at_once_with_the_command_that_creates_it(
    postgres: Database, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql://{postgres.user}@{postgres.host}:{postgres.port}/not_created_yet"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DB_STARTUP_RETRY_SECONDS", "30")
    for command in ("migrate", "doctor", "seed --days 1"):
        started = time.monotonic()
        code, out, err = _run(capsys, *command.split())
        assert time.monotonic() - started < 5, command  # no 30 s of retries
        assert code == cli.EXIT_MISCONFIGURED
        assert out == ""
        assert 'database "not_created_yet" does not exist' in err
        assert f"createdb -h {postgres.host} -p {postgres.port} -U postgres not_created_yet" in err
        assert len(err.splitlines()) == 1


def test_dev_checks_the_database_before_it_starts_anything(postgres: Database) -> None:
    env = {k: v for k, v in os.environ.items() if k not in config.variable_names()}
    env["DATABASE_URL"] = f"postgresql://nobody@{postgres.host}:{postgres.port}/{postgres.dbname}"
    run = subprocess.run(
        [str(Path(sys.executable).parent / "otel-worker"), "dev"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,  # the old start retried for 30 s after starting the broker
        check=False,
    )
    assert run.returncode == cli.EXIT_MISCONFIGURED, run.stdout + run.stderr
    assert run.stdout == ""  # no service was started (nor stopped)
    assert run.stderr.startswith("otel-worker dev: PostgreSQL at ")
    assert 'role "nobody" does not exist' in run.stderr
    assert "createuser" in run.stderr


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
