"""Real services for the tests: PostgreSQL, PgBouncer in front of it, and an S3 server.

Nothing here is mocked. PostgreSQL is the machine's server (127.0.0.1:5432, or
`TEST_DATABASE_URL`) with a fresh database per test session; PgBouncer runs in transaction
pooling mode as production does; S3 is SeaweedFS on free loopback ports.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from minio import Minio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shared import config

if TYPE_CHECKING:
    from shared.computation import Computation
    from shared.db import LazyPool
    from tests.stack import Stack

from shared.dev.stack import PgBouncer, S3Identity, SeaweedS3
from tests.browser import TileServer

S3_REGION = "us-east-1"


@dataclass(frozen=True)
class Database:
    """Where a test database can be reached."""

    dsn: str
    host: str
    port: int
    dbname: str
    user: str

    @property
    def url(self) -> str:
        """The same place as a postgresql:// URL (the form DATABASE_URL takes)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def connect(self, **kwargs: object) -> psycopg.Connection[tuple[object, ...]]:
        """A new autocommit connection without server-side prepared statements."""
        return psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None, **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class S3Server:
    """A running S3-compatible server, an identity allowed everything (the tests' own), and
    the two the functions get, as deployed (DEPLOYMENT.md): compute's, which may only
    write objects, and status's, which may only read and list them."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    server: SeaweedS3
    writer: S3Identity
    reader: S3Identity

    def client(self) -> Minio:
        """A minio client for this server."""
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region=self.region,
        )

    def writer_settings(self, bucket: str, **extra: Any) -> config.StorageSettings:
        """Storage settings for `bucket` as compute is deployed: its write-only identity."""
        return config.StorageSettings.model_validate(
            {
                "minio_endpoint": self.endpoint,
                "minio_access_key": self.writer.access_key,
                "minio_secret_key": self.writer.secret_key,
                "minio_region": self.region,
                "minio_bucket": bucket,
                "minio_create_bucket": False,
                **extra,
            }
        )


def new_computation(
    pool: LazyPool,
    s3: S3Server,
    bucket: str,
    *,
    schema: str,
    worker: str,
    source: str,
    **storage: Any,
) -> Computation:
    """A compute worker on `pool`'s jobs in `schema`, writing to `bucket` as compute does."""
    from shared.computation import Computation
    from shared.jobs import JobStore
    from shared.storage import ObjectStore

    settings = s3.writer_settings(bucket, **storage)
    return Computation(
        jobs=JobStore(pool.connection, config.JobSettings(), schema=schema),
        connection=pool.connection,
        objects=ObjectStore(settings),
        storage=settings,
        worker=worker,
        source=source,
        lease_seconds=60,
    )


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test reads settings anew, never from a developer's `.env` or shell."""
    monkeypatch.chdir(tmp_path)
    for name in config.variable_names():
        monkeypatch.delenv(name, raising=False)
    config.load.cache_clear()
    yield
    config.load.cache_clear()


@contextlib.contextmanager
def _new_database() -> Iterator[Database]:
    """A fresh database on the real server, dropped afterwards."""
    admin = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"otel_worker_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(admin)
    params["dbname"] = name
    dsn = make_conninfo(**params)  # type: ignore[arg-type]
    try:
        yield Database(
            dsn=dsn,
            host=str(params.get("host", "127.0.0.1")),
            port=int(params.get("port", 5432) or 5432),
            dbname=name,
            user=str(params.get("user", "postgres")),
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres() -> Iterator[Database]:
    """A fresh database on the real server for this test session, dropped at the end."""
    with _new_database() as database:
        yield database


@pytest.fixture
def scratch_database() -> Iterator[Database]:
    """A database of its own for one test (e.g. one that needs `public` to itself)."""
    with _new_database() as database:
        yield database


@dataclass(frozen=True)
class Roles:
    """The two roles of a deployment (docs/DATABASE.md#roles): the one that runs the
    migrations and owns the jobs schema, and the one the services log in as."""

    migrator: str = "otel_worker_test_migrator"
    service: str = "otel_worker_test_service"

    def dsn(self, database: Database, role: str) -> str:
        """`database`'s DSN, logging in as `role` (trust: no password)."""
        return f"postgresql://{role}@{database.host}:{database.port}/{database.dbname}"


ROLES = Roles()


def _create_roles(admin: Database) -> None:
    """Create the test roles on the server, unless another session already has (they are
    the server's, shared by every test database, and never dropped)."""
    with admin.connect() as conn:
        for role in (ROLES.migrator, ROLES.service):
            with contextlib.suppress(
                psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation
            ):
                conn.execute(f"CREATE ROLE {role} LOGIN")


def grant_database(database: Database) -> None:
    """What a DBA grants for a deployment: the migrator may create the jobs schema and pass
    on reading public.locations (the services get it from the migrations)."""
    with database.connect() as conn:
        conn.execute(f'GRANT CREATE ON DATABASE "{database.dbname}" TO {ROLES.migrator}')
        if conn.execute("SELECT to_regclass('public.locations')").fetchone() != (None,):
            conn.execute(f"GRANT SELECT ON public.locations TO {ROLES.migrator} WITH GRANT OPTION")


@pytest.fixture(scope="session")
def pgbouncer(postgres: Database) -> Iterator[Database]:
    """PgBouncer in transaction pooling mode in front of the session database."""
    _create_roles(postgres)
    bouncer = PgBouncer(
        server_host=postgres.host,
        server_port=postgres.port,
        dbname=postgres.dbname,
        user=postgres.user,
        others=(ROLES.migrator, ROLES.service),
    )
    try:
        bouncer.start()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    try:
        yield Database(
            dsn=bouncer.dsn,
            host="127.0.0.1",
            port=bouncer.port,
            dbname=postgres.dbname,
            user=postgres.user,
        )
    finally:
        bouncer.stop()


def start_s3(data_dir: Path, access_key: str) -> S3Server:
    """A real S3 server (SeaweedFS) on free loopback ports, with its identities."""
    writer = S3Identity("compute", f"{access_key}-compute", uuid.uuid4().hex, ("Write",))
    reader = S3Identity("status", f"{access_key}-status", uuid.uuid4().hex, ("Read", "List"))
    server = SeaweedS3(
        data_dir=data_dir,
        access_key=access_key,
        secret_key=uuid.uuid4().hex,
        others=(writer, reader),
    ).start()
    return S3Server(
        server.endpoint, server.access_key, server.secret_key, S3_REGION, server, writer, reader
    )


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS) shared by the session, killed at the end."""
    server = start_s3(tmp_path_factory.mktemp("seaweedfs"), "otel-worker-test")
    try:
        yield server
    finally:
        server.server.stop()


Reply = tuple[int, dict[str, str], bytes]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (deadline tests) is expected, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class RecordingServer:
    """A real HTTP server on loopback that records the requests it receives and answers them
    from a script (then with `default`): a peer for code that calls out over HTTP."""

    script: list[Reply] = field(default_factory=list)
    default: Reply = (202, {}, b"")
    routes: dict[str, Reply] = field(default_factory=dict)
    """Fixed replies by exact path, before the script and the default."""
    delay: float = 0.0
    on_receive: Callable[[], None] | None = None
    """Run after recording each request, before answering it (e.g. to break a peer)."""
    received: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> RecordingServer:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                recorder.received.append(
                    {"method": self.command, "path": self.path, "headers": headers, "body": body}
                )
                if recorder.on_receive is not None:
                    recorder.on_receive()
                time.sleep(recorder.delay)
                if self.path in recorder.routes:
                    status, reply_headers, reply = recorder.routes[self.path]
                else:
                    status, reply_headers, reply = (
                        recorder.script.pop(0) if recorder.script else recorder.default
                    )
                self.send_response(status)
                for key, value in reply_headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST  # noqa: N815 (the name http.server dispatches GET to)
            do_DELETE = do_POST  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                return

        # Started again after stop(), it listens on its old port: a peer that came back.
        port = self.server.server_address[1] if self.server else 0
        self.server = _QuietServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture(scope="session")
def seeded(pgbouncer: Database) -> Iterator[Database]:
    """A database of its own whose public.locations holds a month of three devices (written
    once), reached through PgBouncer as production reads it. Separate from the session
    database, whose public.locations other tests rewrite."""
    from shared.dev.tracks import generate
    from shared.locations import write_points
    from tests.stack import SEED

    with _new_database() as database:
        with database.connect() as conn:
            write_points(conn, generate(SEED).points, force=True)
        grant_database(database)
        # The jobs schema is the migrator's from the start, as deployed: a stack a test starts
        # without roles (as the superuser) then finds it migrated instead of claiming it.
        from shared.maintenance import migrate_jobs

        migrate_jobs(
            config.DatabaseSettings(
                database_url=ROLES.dsn(database, ROLES.migrator), db_service_role=ROLES.service
            )
        )
        yield Database(
            dsn=f"postgresql://{database.user}@127.0.0.1:{pgbouncer.port}/{database.dbname}",
            host="127.0.0.1",
            port=pgbouncer.port,
            dbname=database.dbname,
            user=database.user,
        )


@pytest.fixture(scope="session")
def tiles() -> Iterator[TileServer]:
    """Map tiles generated on loopback: the report pages of the tests never reach out."""
    with TileServer() as server:
        yield server


@pytest.fixture(scope="session")
def stack(seeded: Database, postgres: Database, s3: S3Server, tiles: TileServer) -> Iterator[Stack]:
    """The whole system running: broker, submit, compute, status and the ingress; status
    hears of finished jobs on a direct connection, as deployed."""
    from tests.stack import start_stack

    direct = f"postgresql://{seeded.user}@{postgres.host}:{postgres.port}/{seeded.dbname}"
    started = start_stack(
        seeded, s3, MAP_TILE_URL=tiles.template, DATABASE_LISTEN_URL=direct, roles=ROLES
    )
    yield started
    started.supervisor.stop()


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM)."""
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
