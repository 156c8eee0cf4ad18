"""The real services a benchmark runs against: a fresh database on the server, PgBouncer in
front of it, and SeaweedFS; `public.locations` seeded with generated tracks."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from shared.dev.stack import PgBouncer, SeaweedS3
from shared.dev.tracks import TrackSpec, generate
from shared.locations import write_points
from tests.bench.bench_db import bench_database
from tests.conftest import Database, S3Server, start_s3


@contextlib.contextmanager
def services(admin: str, tracks: TrackSpec) -> Iterator[tuple[Database, str, S3Server]]:
    """(the database through PgBouncer, its direct conninfo, the S3 server), torn down after."""
    with bench_database(admin) as params, tempfile.TemporaryDirectory() as folder:
        direct = make_conninfo(**params)
        bouncer = PgBouncer(
            server_host=str(params.get("host", "127.0.0.1")),
            server_port=int(params.get("port", 5432) or 5432),
            dbname=str(params["dbname"]),
            user=str(params.get("user", "postgres")),
        ).start()
        weed: SeaweedS3 | None = None
        try:
            s3 = start_s3(Path(folder) / "s3", "bench")
            weed = s3.server
            with psycopg.connect(direct, autocommit=True) as conn:
                rows = write_points(conn, generate(tracks).points)
            print(
                f"seeded {rows:,} fixes: {tracks.devices} device(s), {tracks.days} days "
                f"from {tracks.start}"
            )
            database = Database(
                bouncer.dsn, "127.0.0.1", bouncer.port, str(params["dbname"]), bouncer.user
            )
            yield database, direct, s3
        finally:
            if weed is not None:
                weed.stop()
            bouncer.stop()
