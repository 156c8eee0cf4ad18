"""Connecting: start-up retry, the clear unavailable error, the lazy pool (real servers)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

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


def _forward(listener: socket.socket, host: str, port: int) -> None:
    """Relay each connection accepted on `listener` to host:port until either side closes."""

    def pipe(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    with contextlib.suppress(OSError):  # the listener is closed at the end of the test
        while True:
            client, _ = listener.accept()
            server = socket.create_connection((host, port))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()


def test_connect_waits_for_a_server_that_comes_up(postgres: Database) -> None:
    # Nothing listens on the port for the first attempts (connection refused: transient).
    (port,) = free_ports(1)
    settings = _settings(
        f"postgresql://{postgres.user}@127.0.0.1:{port}/{postgres.dbname}",
        db_startup_retry_seconds=10.0,
    )
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def come_up_later() -> None:
        time.sleep(0.5)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        _forward(listener, postgres.host, postgres.port)

    server = threading.Thread(target=come_up_later, daemon=True)
    server.start()
    started = time.monotonic()
    try:
        with db.connect(settings) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (postgres.dbname,)
        assert time.monotonic() - started >= 0.5
    finally:
        listener.close()
        server.join(timeout=5)


@pytest.mark.parametrize(
    ("path", "says", "hint"),
    [
        (
            "/no_such_db",
            'database "no_such_db" does not exist',
            "create it with `createdb -h 127.0.0.1 -p {port} -U postgres no_such_db`, "
            "or set DATABASE_URL to a database that exists",
        ),
        (
            "nobody@/postgres",
            'role "nobody" does not exist',
            "createuser -h 127.0.0.1 -p {port} -U postgres nobody`, or set DATABASE_URL",
        ),
    ],
)
def test_a_permanent_refusal_fails_at_once_with_a_hint(
    postgres: Database, path: str, says: str, hint: str
) -> None:
    user, _, dbname = path.rpartition("@")
    url = f"postgresql://{user or postgres.user}@{postgres.host}:{postgres.port}{dbname}"
    started = time.monotonic()
    with pytest.raises(db.DatabaseMisconfigured) as caught:
        db.connect(_settings(url, db_startup_retry_seconds=30.0))
    assert time.monotonic() - started < 2.0  # not retried for the 30 s window
    message = str(caught.value)
    assert says in message
    assert hint.format(port=postgres.port) in message
    assert "\n" not in message


def test_a_database_pgbouncer_does_not_know_fails_at_once(pgbouncer: Database) -> None:
    url = f"postgresql://{pgbouncer.user}@127.0.0.1:{pgbouncer.port}/not_configured"
    started = time.monotonic()
    with pytest.raises(db.DatabaseMisconfigured, match=r"createdb .* not_configured"):
        db.connect(_settings(url, db_startup_retry_seconds=30.0))
    assert time.monotonic() - started < 2.0


def test_the_hint_names_the_variable_that_sets_the_failing_part() -> None:
    parts = DatabaseSettings(postgres_db="tracks", postgres_user="ot")
    assert db._permanent_hint('FATAL:  database "tracks" does not exist', parts) == (
        "create it with `createdb -h 127.0.0.1 -p 5432 -U ot tracks`, "
        "or set POSTGRES_DB to a database that exists"
    )
    assert db._permanent_hint('FATAL:  password authentication failed for user "ot"', parts) == (
        "check the password in POSTGRES_PASSWORD"
    )
    url = _settings("postgresql://ot:pw@db:6432/tracks")
    assert db._permanent_hint("FATAL:  password authentication failed", url) == (
        "check the password in DATABASE_URL"
    )
    for transient in (
        "FATAL:  the database system is starting up",
        "FATAL:  the database system is shutting down",
        "FATAL:  sorry, too many clients already",
        'connection to server at "127.0.0.1", port 5432 failed: Connection refused',
        "timeout expired",
    ):
        assert db._permanent_hint(transient, parts) is None, transient


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
