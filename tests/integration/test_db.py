"""Connecting: start-up retry, the clear unavailable error, the lazy pool (real servers)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from shared import db
from shared.config import DatabaseSettings
from shared.dev.stack import free_ports
from tests.conftest import Database


def _settings(dsn: str, **overrides: object) -> DatabaseSettings:
    return DatabaseSettings(database_url=dsn, **overrides)  # type: ignore[arg-type]


def _closed_port_url() -> str:
    (port,) = free_ports(1)
    return f"postgresql://postgres:s3cret@127.0.0.1:{port}/owntracks"


def test_connect_gives_an_autocommit_connection_without_prepared_statements(
    pgbouncer: Database,
) -> None:
    with db.connect(_settings(pgbouncer.url)) as conn:
        assert conn.autocommit
        assert conn.prepare_threshold is None
        # Repeating a statement must never prepare it: PgBouncer 1.18 cannot carry that.
        for _ in range(10):
            assert conn.execute("SELECT %s::int + 1", [41]).fetchone() == (42,)


def test_unreachable_database_raises_the_clear_error_within_the_retry_window() -> None:
    settings = _settings(_closed_port_url(), db_startup_retry_seconds=1.0)
    started = time.monotonic()
    with pytest.raises(db.DatabaseUnavailable) as caught:
        db.connect(settings)
    elapsed = time.monotonic() - started
    assert 0.15 < elapsed < 3.0  # it retried, with backoff, and gave up in time
    message = str(caught.value)
    assert "127.0.0.1" in message
    assert "attempt" in message
    assert "Connection refused" in message
    assert "s3cret" not in message


def test_a_zero_retry_window_tries_once() -> None:
    started = time.monotonic()
    with pytest.raises(db.DatabaseUnavailable, match=r"\(1 attempt"):
        db.connect(_settings(_closed_port_url(), db_startup_retry_seconds=0))
    assert time.monotonic() - started < 1.0


def test_connect_waits_for_a_database_that_comes_up(postgres: Database) -> None:
    # The database exists only after the first attempts have failed.
    name = f"{postgres.dbname}_late"
    url = postgres.url.rsplit("/", 1)[0]
    settings = _settings(f"{url}/{name}", db_startup_retry_seconds=10.0)

    def create_later() -> None:
        time.sleep(0.5)
        with psycopg.connect(postgres.dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')

    creator = threading.Thread(target=create_later)
    creator.start()
    try:
        with db.connect(settings) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (name,)
    finally:
        creator.join()
        with psycopg.connect(postgres.dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_pool_connects_only_when_first_used() -> None:
    pool = db.LazyPool(_settings(_closed_port_url(), db_startup_retry_seconds=0))
    # Building it touched nothing; using it reports the database as unavailable.
    with pytest.raises(db.DatabaseUnavailable), pool.connection():
        pass
    pool.close()


def test_the_pool_waits_out_the_start_up_window_once_then_fails_fast() -> None:
    pool = db.LazyPool(_settings(_closed_port_url(), db_startup_retry_seconds=1.0))
    failures: list[float] = []

    def request() -> None:
        started = time.monotonic()
        with pytest.raises(db.DatabaseUnavailable), pool.connection():
            pass
        failures.append(time.monotonic() - started)

    request()
    assert failures[0] > 0.15  # the first request waited for the database to come up
    # Later requests, even many at once, are answered at once: the caller retries.
    callers = [threading.Thread(target=request) for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(failures) == 5
    assert max(failures[1:]) < 0.5, failures
    pool.close()


def test_requests_while_the_pool_opens_wait_at_most_the_connect_timeout() -> None:
    pool = db.LazyPool(
        _settings(_closed_port_url(), db_startup_retry_seconds=3.0, db_connect_timeout_seconds=0.3)
    )
    first: list[BaseException] = []

    def open_it() -> None:
        try:
            with pool.connection():
                pass
        except db.DatabaseUnavailable as exc:
            first.append(exc)

    opening = threading.Thread(target=open_it)
    opening.start()
    time.sleep(0.1)
    started = time.monotonic()
    with pytest.raises(db.DatabaseUnavailable, match="still connecting"), pool.connection():
        pass
    assert time.monotonic() - started < 1.0
    opening.join()
    assert len(first) == 1  # the opener itself waited its window, then gave up
    pool.close()


def test_the_pool_lends_connections_through_pgbouncer(pgbouncer: Database) -> None:
    pool = db.LazyPool(_settings(pgbouncer.url))
    try:
        for _ in range(3):
            with pool.connection() as conn:
                assert conn.autocommit
                assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()
        pool.close()


def test_a_connection_lost_inside_the_block_is_reported_as_unavailable(
    postgres: Database,
) -> None:
    pool = db.LazyPool(_settings(postgres.url))
    try:
        with pytest.raises(db.DatabaseUnavailable), pool.connection() as conn:
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        # The pool drops the broken connection and lends a working one.
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()


def test_settings_built_from_parts_reach_the_server(postgres: Database) -> None:
    settings = DatabaseSettings(
        postgres_host=postgres.host,
        postgres_port=postgres.port,
        postgres_db=postgres.dbname,
        postgres_user=postgres.user,
        postgres_password="p@ss word/:",  # type: ignore[arg-type]
    )
    assert settings.conninfo() == (
        f"postgresql://{postgres.user}:p%40ss%20word%2F%3A@{postgres.host}:{postgres.port}/"
        f"{postgres.dbname}"
    )
    with db.connect(settings) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (postgres.dbname,)


def test_bad_database_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import config

    monkeypatch.setenv("JOBS_SCHEMA", "Robert'); DROP TABLE jobs;--")
    monkeypatch.setenv("DATABASE_URL", "mysql://somewhere/else")
    with pytest.raises(config.ConfigError) as caught:
        config.load(DatabaseSettings)
    assert "JOBS_SCHEMA: must be a lower-case SQL identifier" in str(caught.value)
    assert "DATABASE_URL: must start with postgresql://" in str(caught.value)
