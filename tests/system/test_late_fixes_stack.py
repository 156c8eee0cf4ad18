"""Late fixes end to end on a stack of its own (dev broker, compute workers, PgBouncer,
SeaweedFS): a phone's held-back fixes uploaded after its range job completed make
`otel-worker refresh` supersede the job, and the successor it announces is computed by
compute through the broker with the late fixes in."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest
import urllib3

from shared import cli, migrate
from shared.contracts import headline
from shared.dev.stack import PgBouncer
from shared.dev.tracks import TrackSpec, generate
from shared.locations import write_points
from tests.conftest import Database, S3Server
from tests.stack import Stack, start_stack

ZONE = "America/New_York"
TODAY = dt.datetime.now(ZoneInfo(ZONE)).date()
FIRST, LAST = TODAY - dt.timedelta(days=4), TODAY - dt.timedelta(days=1)
LATE_DAY = TODAY - dt.timedelta(days=2)
SPEC = TrackSpec(start=TODAY - dt.timedelta(days=6), days=6, devices=2, timezone=ZONE)
# Most of phone1's LATE_DAY (06:00 to 20:00 local), held back by the phone: a gap the
# figures count as unknown time until the fixes arrive.
HELD = tuple(
    dt.datetime.combine(LATE_DAY, dt.time(hour), ZoneInfo(ZONE)).astimezone(dt.UTC)
    for hour in (6, 20)
)


@pytest.fixture
def stack(scratch_database: Database, s3: S3Server) -> Iterator[Stack]:
    with scratch_database.connect() as conn:
        migrate.migrate(conn, "otel_worker")
        write_points(conn, generate(SPEC).points)
        conn.execute(
            "CREATE TABLE held AS SELECT * FROM public.locations WHERE device_id = 'phone1'"
            ' AND "timestamp" >= %s AND "timestamp" < %s',
            HELD,
        )
        conn.execute(
            "DELETE FROM public.locations WHERE device_id = 'phone1'"
            ' AND "timestamp" >= %s AND "timestamp" < %s',
            HELD,
        )
    bouncer = PgBouncer(
        server_host=scratch_database.host,
        server_port=scratch_database.port,
        dbname=scratch_database.dbname,
        user=scratch_database.user,
    ).start()
    through = Database(
        dsn=bouncer.dsn,
        host="127.0.0.1",
        port=bouncer.port,
        dbname=scratch_database.dbname,
        user=scratch_database.user,
    )
    started = start_stack(through, s3, compute_workers=2)
    yield started
    started.supervisor.stop()
    bouncer.stop()


def test_held_back_fixes_supersede_the_range_job_and_its_successor_is_computed(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reply = urllib3.request(
        "POST", stack.url("submit"), json={"date": f"{FIRST}", "end_date": f"{LAST}"}
    )
    assert reply.status in (200, 202), reply.data
    old_id = reply.json()["job"]["job_id"]
    old = stack.wait_finished(old_id)
    assert old.status == "completed"
    assert old.result is not None
    # The late-fix check as its CronJob runs it: nothing changed yet.
    for name in ("DATABASE_URL", "MINIO_ENDPOINT", "MINIO_REGION", "MINIO_BUCKET"):
        monkeypatch.setenv(name, stack.env[name])
    monkeypatch.setenv("MINIO_CREATE_BUCKET", "false")
    monkeypatch.setenv("MINIO_ACCESS_KEY", stack.s3.writer.access_key)
    monkeypatch.setenv("MINIO_SECRET_KEY", stack.s3.writer.secret_key)
    monkeypatch.setenv("K_SINK", stack.broker)
    assert cli.main(["refresh"]) == 0
    assert "0 changed since computed" in capsys.readouterr().out
    with stack.db() as conn:
        uploaded = conn.execute("INSERT INTO public.locations SELECT * FROM held").rowcount
    assert uploaded > 100
    assert cli.main(["refresh"]) == 0
    out = capsys.readouterr().out
    assert "1 superseded" in out, out
    new_id = str(stack.job(old_id).superseded_by)
    assert f"{old_id} superseded by {new_id}" in out
    # The successor, announced with job.queued, is computed by compute through the broker.
    new = stack.wait_finished(new_id)
    assert new.status == "completed"
    assert str(new.supersedes) == old_id
    assert new.result is not None
    assert new.result["points"]["read"] == old.result["points"]["read"] + uploaded
    assert headline(new.result) != headline(old.result)
    assert (new.date, new.end_date, new.device_id) == (old.date, old.end_date, old.device_id)
    # A further check: the successor stands, nothing else happens.
    assert cli.main(["refresh"]) == 0
    assert "0 superseded" in capsys.readouterr().out
