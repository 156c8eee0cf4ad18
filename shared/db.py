"""Connections to PostgreSQL, made the one way that works through PgBouncer.

Production reaches PostgreSQL through PgBouncer in transaction pooling mode: consecutive
transactions of one client may run on different server connections. So connections here
carry no session state: psycopg never prepares statements server-side
(`prepare_threshold=None`), settings are only ever `SET LOCAL`, and advisory locks are
transaction-scoped.

Connecting retries with exponential backoff for a start-up window (the database may come
up after the pod) and then raises `DatabaseUnavailable`, which request handlers turn into a
retryable status (503, gRPC UNAVAILABLE, 5xx toward the broker). Refusals no retry can
change (an unknown database or role, a wrong password) end at once with
`DatabaseMisconfigured`, whose message says what to fix.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeAlias

import psycopg
import tenacity
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from shared.config import DatabaseSettings
from shared.errors import DependencyUnavailable

log = logging.getLogger(__name__)

Connection: TypeAlias = psycopg.Connection[Any]
ConnectionSource: TypeAlias = Callable[[], AbstractContextManager[Connection]]
"""Lends an autocommit connection for the duration of a `with` block (see `LazyPool`)."""


class DatabaseUnavailable(DependencyUnavailable):
    """PostgreSQL (or PgBouncer in front of it) cannot be reached, or the connection broke.

    Transient by nature: answer 503 / UNAVAILABLE / 5xx so the caller retries later.
    """


class DatabaseMisconfigured(DatabaseUnavailable):
    """The server answered and refused for good: an unknown database or role, a wrong
    password, no `pg_hba.conf` entry. Retrying cannot help; the message carries a hint."""


# Server refusals at connect time that stay refusals however often one asks (libpq gives
# no SQLSTATE for them, only the server's message; PgBouncer words some its own way).
_DATABASE_MISSING = re.compile(r'database "(?P<name>[^"]*)" does not exist|no such database')
_ROLE_MISSING = re.compile(r'role "(?P<name>[^"]*)" does not exist')
_BAD_PASSWORD = re.compile(r"password authentication failed|no password supplied")
_NOT_ALLOWED = re.compile(r"no pg_hba\.conf entry|SSL was required|does not support SSL")


def _permanent_hint(message: str, settings: DatabaseSettings) -> str | None:
    """What to do about a refusal no retry can change, or None for a transient failure
    (refused or timed-out connections, a server starting up or shutting down)."""
    params = conninfo_to_dict(settings.conninfo())
    via = "DATABASE_URL" if settings.database_url else None
    host, port = params.get("host", "localhost"), params.get("port", 5432)
    user = params.get("user", "postgres")
    if found := _DATABASE_MISSING.search(message):
        name = found.group("name") or params.get("dbname", "")
        return (
            f"create it with `createdb -h {host} -p {port} -U {user} {name}`, "
            f"or set {via or 'POSTGRES_DB'} to a database that exists"
        )
    if found := _ROLE_MISSING.search(message):
        return (
            f"create the role with `createuser -h {host} -p {port} -U postgres "
            f"{found.group('name')}`, or set {via or 'POSTGRES_USER'} to a role that exists"
        )
    if _BAD_PASSWORD.search(message):
        return f"check the password in {via or 'POSTGRES_PASSWORD'}"
    if _NOT_ALLOWED.search(message):
        return (
            f"the server does not accept this connection; check {via or 'the POSTGRES_* settings'}"
            " and the server's pg_hba.conf / SSL settings"
        )
    return None


def _where(conninfo: str) -> str:
    """host:port/dbname of a connection string, never its password."""
    params = conninfo_to_dict(conninfo)
    host, port = params.get("host", "localhost"), params.get("port", 5432)
    return f"{host}:{port}/{params.get('dbname', '')}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _server_says(exc: BaseException) -> str:
    """The server's own words in a connection error, without libpq's preamble."""
    line = _first_line(exc)
    return line.rsplit("FATAL:", 1)[-1].strip() if "FATAL:" in line else line


def connection_options(settings: DatabaseSettings) -> dict[str, Any]:
    """The keyword arguments of every connection: autocommit, nothing prepared, bounded connect."""
    return {
        "autocommit": True,
        "prepare_threshold": None,
        # libpq takes whole seconds and treats anything below 2 as 2.
        "connect_timeout": max(2, math.ceil(settings.db_connect_timeout_seconds)),
    }


def connect(settings: DatabaseSettings, *, retry_seconds: float | None = None) -> Connection:
    """Open one autocommit connection, retrying with exponential backoff while it fails.

    Attempts start for up to `retry_seconds` (default `DB_STARTUP_RETRY_SECONDS`; 0 means
    a single attempt), each bounded by `DB_CONNECT_TIMEOUT_SECONDS`. Raises
    `DatabaseUnavailable` naming the server (without credentials) and the last error, or
    at once `DatabaseMisconfigured` when the server refuses in a way no retry can change.
    """
    conninfo = settings.conninfo()
    window = settings.db_startup_retry_seconds if retry_seconds is None else retry_seconds
    options = connection_options(settings)

    def warn(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        pause = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "database at %s not reachable (attempt %d: %s); retrying in %.1f s",
            _where(conninfo),
            state.attempt_number,
            _first_line(error) if error else "no error",
            pause,
        )

    def transient(exc: BaseException) -> bool:
        return isinstance(exc, psycopg.OperationalError) and (
            _permanent_hint(str(exc), settings) is None
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_before_delay(window),
        wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.1),
        retry=tenacity.retry_if_exception(transient),
        before_sleep=warn,
        reraise=True,
    )
    try:
        return retrying(psycopg.connect, conninfo, **options)
    except psycopg.OperationalError as exc:
        hint = _permanent_hint(str(exc), settings)
        if hint is not None:
            raise DatabaseMisconfigured(
                f"PostgreSQL at {_where(conninfo)} refused the connection: "
                f"{_server_says(exc)}; {hint}"
            ) from exc
        attempts = retrying.statistics.get("attempt_number", 1)
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {_where(conninfo)} "
            f"({attempts} attempt(s) over {window:g} s): {_first_line(exc)}"
        ) from exc


@contextlib.contextmanager
def unavailable_on_failure(where: str) -> Iterator[None]:
    """Re-raise connection-level failures inside the block as `DatabaseUnavailable`.

    `psycopg.OperationalError` covers a lost connection, a server shutting down, a pool
    that found no connection in time and timeouts: all worth a retry by the caller.
    """
    try:
        yield
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"PostgreSQL at {where}: {_first_line(exc)}") from exc


class LazyPool:
    """A connection pool for one serving process, opened on first use.

    functions-framework imports the application before gunicorn forks its workers, so
    nothing may connect at import: build a `LazyPool` at module level if convenient, and
    the first `connection()` in the serving process opens it (after `connect`'s start-up
    retry proves the database reachable).

    The start-up window is waited once per process: should the database still be down
    after it, each later request makes a single attempt and fails fast with
    `DatabaseUnavailable` (a 503 the caller retries on its own schedule) instead of holding
    its caller for another window. Requests arriving while the pool is being opened wait
    for it at most `DB_CONNECT_TIMEOUT_SECONDS`.
    """

    def __init__(self, settings: DatabaseSettings) -> None:
        self._settings = settings
        self._where = _where(settings.conninfo())
        self._pool: ConnectionPool[Connection] | None = None
        self._lock = threading.Lock()
        self._started = False

    def _opened(self) -> ConnectionPool[Connection]:
        if not self._lock.acquire(timeout=self._settings.db_connect_timeout_seconds):
            raise DatabaseUnavailable(
                f"PostgreSQL at {self._where}: still connecting (another request is waiting "
                "for the database to come up)"
            )
        try:
            if self._pool is None:
                retry = 0.0 if self._started else None
                self._started = True
                connect(self._settings, retry_seconds=retry).close()
                pool: ConnectionPool[Connection] = ConnectionPool(
                    self._settings.conninfo(),
                    min_size=1,
                    max_size=self._settings.db_pool_max_size,
                    kwargs=connection_options(self._settings),
                    # No round trip per checkout (it cost a statement per operation): a
                    # connection closed while idle fails its next use with OperationalError,
                    # which becomes DatabaseUnavailable (a retried 503), and the pool then
                    # replaces it. Idle connections are recycled well before PgBouncer's
                    # client_idle_timeout would cut them.
                    max_idle=300,
                    timeout=self._settings.db_connect_timeout_seconds,
                    name="otel-worker",
                    open=False,
                )
                try:
                    with unavailable_on_failure(self._where):
                        pool.open(wait=True, timeout=self._settings.db_connect_timeout_seconds)
                except DatabaseUnavailable:
                    pool.close()
                    raise
                self._pool = pool
            return self._pool
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """Lend an autocommit connection; failures to reach the database raise
        `DatabaseUnavailable` (also when they happen inside the block)."""
        pool = self._opened()
        with unavailable_on_failure(self._where), pool.connection() as conn:
            yield conn

    def close(self) -> None:
        """Close the pool if it was opened; a later `connection()` opens a new one."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
