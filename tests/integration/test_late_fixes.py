"""Late fixes against the real database (through PgBouncer) and S3 server: a fix uploaded
after a job finished supersedes that job exactly once, with the right event, recomputing
only the device-days whose rows changed; a change that moves no figure supersedes nothing;
racing checks make one successor; late fixes landing while a range is fanned out are
caught."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import uuid
from collections.abc import Iterator

import pytest
from cloudevents.http import CloudEvent

from shared import events, migrate
from shared.computation import Computation
from shared.config import AnalysisSettings, DatabaseSettings
from shared.contracts import DayRequested, DaySummarized, JobSuperseded, headline
from shared.day_results import DayStore
from shared.db import LazyPool
from shared.dev.stack import PgBouncer
from shared.dev.tracks import TrackSpec, generate
from shared.events import Publisher
from shared.job_view import job_view
from shared.jobs import JobRequest
from shared.locations import write_points
from shared.nightly import NightlySummaries
from shared.ranges import RangeComputation
from shared.storage import ObjectStore
from shared.supersession import LateFixCheck, RefreshReport
from tests.conftest import Database, RecordingServer, S3Server, new_computation

SCHEMA = "otel_worker"
FIRST = dt.date(2024, 3, 4)
LAST = dt.date(2024, 3, 7)
TODAY = LAST + dt.timedelta(days=1)
SPEC = TrackSpec(start=FIRST - dt.timedelta(days=1), days=6, devices=2)
LATE_DAY = dt.date(2024, 3, 5)
# An hour of phone1's morning commute on LATE_DAY (08:00 to 09:00 EST), held back by the
# phone and uploaded late: it moves that day's path.
HELD = (dt.datetime(2024, 3, 5, 13, tzinfo=dt.UTC), dt.datetime(2024, 3, 5, 14, tzinfo=dt.UTC))


@pytest.fixture
def pool(scratch_database: Database) -> Iterator[LazyPool]:
    with scratch_database.connect() as conn:
        migrate.migrate(conn, SCHEMA)
        write_points(conn, generate(SPEC).points)
        conn.execute(
            "CREATE TABLE held AS SELECT * FROM public.locations WHERE device_id = 'phone1'"
            ' AND "timestamp" >= %s AND "timestamp" < %s',
            HELD,
        )
        conn.execute(
            "DELETE FROM public.locations WHERE ctid IN (SELECT l.ctid FROM"
            ' public.locations l JOIN held h ON (l.device_id, l."timestamp") ='
            ' (h.device_id, h."timestamp"))'
        )
    # Through PgBouncer in transaction pooling mode, as production reaches the database.
    bouncer = PgBouncer(
        server_host=scratch_database.host,
        server_port=scratch_database.port,
        dbname=scratch_database.dbname,
        user=scratch_database.user,
    ).start()
    lazy = LazyPool(DatabaseSettings(database_url=bouncer.dsn))
    yield lazy
    lazy.close()
    bouncer.stop()


@pytest.fixture
def computation(pool: LazyPool, s3: S3Server) -> Computation:
    bucket = f"late-{uuid.uuid4().hex[:8]}"
    s3.client().make_bucket(bucket)
    return new_computation(
        pool, s3, bucket, schema=SCHEMA, worker="worker-late", source="/tests/late"
    )


def _check(computation: Computation) -> LateFixCheck:
    ranges = RangeComputation(
        connection=computation.connection,
        days=DayStore(computation.jobs.connection, SCHEMA),
        objects=computation.objects,
        max_csv_rows=computation.storage.max_csv_rows,
        max_day_read_rows=computation.storage.max_day_read_rows,
    )
    return LateFixCheck(computation.jobs, ranges, refresh_days=7)


def _request(device_id: str | None = None) -> JobRequest:
    params = AnalysisSettings(
        home_latitude=SPEC.home_latitude, home_longitude=SPEC.home_longitude
    ).engine_params()
    return JobRequest(
        date_from=FIRST,
        date_to=LAST,
        device_id=device_id,
        timezone=SPEC.timezone,
        parameters=params.model_dump(mode="json"),
    )


def _run(computation: Computation, request: JobRequest, key: str | None = None) -> uuid.UUID:
    job, _ = computation.jobs.create(request, idempotency_key=key or uuid.uuid4().hex)
    outcome = computation.run(job.id)
    assert outcome.detail == f"job {job.id} completed", outcome.detail
    return job.id


def _devices(pool: LazyPool) -> list[str]:
    with pool.connection() as conn:
        rows = conn.execute("SELECT DISTINCT device_id FROM public.locations ORDER BY 1")
        return [row[0] for row in rows.fetchall()]


def _late_fixes(pool: LazyPool) -> int:
    """Upload phone1's held-back hour; the fixes uploaded."""
    with pool.connection() as conn:
        return conn.execute("INSERT INTO public.locations SELECT * FROM held").rowcount


def _computed_at(pool: LazyPool) -> dict[tuple[str, dt.date], dt.datetime]:
    with pool.connection() as conn:
        rows = conn.execute(
            f"SELECT device_id, day, computed_at FROM {SCHEMA}.day_results"
        ).fetchall()
    return {(device, day): at for device, day, at in rows}


def _read_ranges(pool: LazyPool) -> dict[tuple[str, dt.date], tuple[dt.datetime, dt.datetime]]:
    with pool.connection() as conn:
        rows = conn.execute(
            f"SELECT device_id, day, read_from, read_to FROM {SCHEMA}.day_results"
        ).fetchall()
    return {(device, day): (lo, hi) for device, day, lo, hi in rows}


class Sent(list[CloudEvent]):
    """The events a check published, in order."""

    def __call__(self, event: CloudEvent) -> None:
        self.append(event)


def test_a_late_fix_supersedes_the_job_it_moved_once_with_its_event(
    computation: Computation, pool: LazyPool
) -> None:
    phone1, phone2 = _devices(pool)
    every = _run(computation, _request(), key="every-device")
    only_other = _run(computation, _request(phone2))
    check = _check(computation)
    # Nothing changed since: nothing recomputed, nothing superseded, nothing sent.
    sent = Sent()
    quiet = check.run(TODAY, sent, "/tests")
    assert (quiet.stale, quiet.recomputed, quiet.superseded, sent) == ([], 0, [], [])
    before = _computed_at(pool)
    _late_fixes(pool)
    report = check.run(TODAY, sent, "/tests")
    # Recomputed: phone1's device-days whose read covers the fix (the day and, through
    # the day of context each side, its neighbours), no other.
    after = _computed_at(pool)
    changed = {cell for cell in after if after[cell] != before[cell]}
    reads = _read_ranges(pool)
    assert changed == {
        cell
        for cell in reads
        if cell[0] == phone1 and reads[cell][0] < HELD[1] and HELD[0] < reads[cell][1]
    }
    assert (phone1, LATE_DAY) in changed
    assert report.recomputed == len(changed)
    assert {(device, day) for _, device, day in report.stale} == changed
    # Exactly one job superseded: the every-device one; phone2's job stands.
    assert [(old.id, new.supersedes) for old, new in report.superseded] == [(every, every)]
    new = report.superseded[0][1]
    assert report.still_true == []  # phone2's job covers no changed day: not even checked
    assert computation.jobs.get(only_other).superseded_by is None  # type: ignore[union-attr]
    # The old job names its successor, the new one its predecessor, in the job's JSON.
    stored = computation.jobs.get(every)
    assert stored is not None
    assert stored.status == "completed"
    assert job_view(stored).superseded_by == new.id
    assert new.status == "queued"
    assert (new.date_from, new.date_to, new.device_id, new.timezone, new.parameters) == (
        stored.date_from,
        stored.date_to,
        stored.device_id,
        stored.timezone,
        stored.parameters,
    )
    # Repeating the old request's idempotency key still gets the old job, naming its successor.
    again, created = computation.jobs.create(_request(), idempotency_key="every-device")
    assert (again.id, created, again.superseded_by) == (every, False, new.id)
    # The event: old and new ids, old and new headline figures.
    assert [e["type"] for e in sent] == [events.JOB_SUPERSEDED]
    assert sent[0]["id"] == f"{every}.superseded"
    data = JobSuperseded.model_validate(sent[0].get_data())
    assert (data.old_job_id, data.new_job_id) == (every, new.id)
    assert stored.result is not None
    assert data.old == headline(stored.result)
    assert data.new.path_km > data.old.path_km
    assert data.new.points_used > data.old.points_used
    # The new job, computed, reports the figures the event announced.
    assert computation.run(new.id).detail == f"job {new.id} completed"
    computed = computation.jobs.get(new.id)
    assert computed is not None
    assert computed.result is not None
    assert headline(computed.result) == data.new
    assert job_view(computed).supersedes == every
    # The next check finds nothing more to do.
    sent.clear()
    later = check.run(TODAY, sent, "/tests")
    assert (later.stale, later.superseded, sent) == ([], [], [])


def test_an_exact_duplicate_fix_recomputes_its_days_and_supersedes_nothing(
    computation: Computation, pool: LazyPool
) -> None:
    phone1, _ = _devices(pool)
    job_id = _run(computation, _request())
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO public.locations (device_id, latitude, longitude, accuracy, velocity,"
            ' battery, "timestamp", created_at) SELECT device_id, latitude, longitude,'
            ' accuracy, velocity, battery, "timestamp", created_at FROM public.locations'
            ' WHERE device_id = %s AND "timestamp" >= %s ORDER BY "timestamp" LIMIT 1',
            (phone1, HELD[1]),
        )
    sent = Sent()
    report = _check(computation).run(TODAY, sent, "/tests")
    assert report.stale  # the rows did change...
    assert report.recomputed == len(report.stale)
    assert report.superseded == []  # ...but no figure moved
    assert report.still_true == [job_id]
    assert sent == []
    job = computation.jobs.get(job_id)
    assert job is not None
    assert job.superseded_by is None
    assert job.figures_checked_at is not None
    # Checked and true: the next check does not recompute it again.
    assert _check(computation).run(TODAY, sent, "/tests").still_true == []


def test_two_checks_racing_make_one_superseding_job(
    computation: Computation, pool: LazyPool
) -> None:
    job_id = _run(computation, _request())
    _late_fixes(pool)
    reports: list[RefreshReport] = []
    sent = Sent()
    start = threading.Barrier(2)

    def check() -> None:
        start.wait()
        reports.append(_check(computation).run(TODAY, sent, "/tests"))

    threads = [threading.Thread(target=check) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(report.superseded) for report in reports) == [0, 1]
    with pool.connection() as conn:
        successors = conn.execute(
            f"SELECT id FROM {SCHEMA}.jobs WHERE supersedes = %s", (job_id,)
        ).fetchall()
    assert len(successors) == 1
    job = computation.jobs.get(job_id)
    assert job is not None
    assert job.superseded_by == successors[0][0]
    assert [e["id"] for e in sent] == [f"{job_id}.superseded"]


def test_a_job_outside_the_refresh_window_is_left_alone(
    computation: Computation, pool: LazyPool
) -> None:
    _run(computation, _request())
    _late_fixes(pool)
    far = LAST + dt.timedelta(days=9)  # the window (7 days back) starts after the job's days
    report = _check(computation).run(far, Sent(), "/tests")
    assert (report.kept, report.stale, report.superseded) == (0, [], [])


# --- fanned out: late fixes landing while a range's days are computed ----------------


@pytest.fixture
def broker() -> Iterator[RecordingServer]:
    server = RecordingServer().start()
    yield server
    server.stop()


def _days(broker: RecordingServer) -> list[tuple[uuid.UUID, str, dt.date, dt.date]]:
    """The runs of device-days announced: (job, device, first day, last day)."""
    out = []
    for request in broker.received:
        data = DayRequested.model_validate_json(request["body"])
        out.append((data.job_id, data.device_id, data.day, data.last_day or data.day))
    broker.received.clear()
    return out


def test_late_fixes_landing_during_a_fan_out_end_in_the_job_and_supersede_nothing(
    computation: Computation, pool: LazyPool, broker: RecordingServer
) -> None:
    phone1, _ = _devices(pool)
    fanned = dataclasses.replace(computation, publisher=Publisher(broker.url))
    job, _ = fanned.jobs.create(_request(), idempotency_key="fanned")
    fanned.run(job.id)
    days = _days(broker)
    done_first = [run for run in days if run[1] == phone1 and run[2] <= LATE_DAY <= run[3]]
    rest = [cell for cell in days if cell not in done_first]
    # phone1's run holding LATE_DAY is computed, then the late fixes land, then the other
    # days finish: the assembly re-checks every day's fingerprint and computes it again.
    fanned.run_day(*done_first[0])
    _late_fixes(pool)
    outcomes = [fanned.run_day(*cell) for cell in rest]
    assert outcomes[-1].detail == f"job {job.id} completed"
    completed = fanned.jobs.get(job.id)
    assert completed is not None
    assert completed.result is not None
    alone = computation.jobs.get(_run(computation, _request()))
    assert alone is not None
    assert alone.result is not None
    assert completed.result["points"] == alone.result["points"]
    assert headline(completed.result) == headline(alone.result)
    # Its figures are true: the check leaves it standing and sends nothing.
    sent = Sent()
    report = _check(fanned).run(TODAY, sent, "/tests")
    assert (report.superseded, sent) == ([], [])
    stood = fanned.jobs.get(job.id)
    assert stood is not None
    assert stood.superseded_by is None


def test_a_check_that_cannot_store_its_days_supersedes_nothing_and_the_next_one_does(
    computation: Computation, pool: LazyPool
) -> None:
    job_id = _run(computation, _request())
    _late_fixes(pool)
    dead = computation.storage.model_copy(update={"minio_endpoint": "127.0.0.1:9"})
    check = _check(computation)
    down = dataclasses.replace(
        check, ranges=dataclasses.replace(check.ranges, objects=ObjectStore(dead))
    )
    sent = Sent()
    report = down.run(TODAY, sent, "/tests")
    assert [what for what, _ in report.failures] == [f"job {job_id}"]
    assert report.failures[0][1].startswith("uploading days/")
    assert (report.superseded, sent) == ([], [])
    assert "could not re-check 1 item(s); the next run will" in report.lines()
    job = computation.jobs.get(job_id)
    assert job is not None
    assert (job.superseded_by, job.figures_checked_at) == (None, None)
    # The store is back: the next check supersedes it.
    again = check.run(TODAY, sent, "/tests")
    assert [old.id for old, _ in again.superseded] == [job_id]
    assert again.failures == []


def test_late_fixes_into_a_summarised_day_send_its_corrected_summary_once(
    computation: Computation, pool: LazyPool
) -> None:
    check = _check(computation)
    nightly = NightlySummaries(check.ranges, computation.jobs.connection, SCHEMA)
    params = AnalysisSettings(
        home_latitude=SPEC.home_latitude, home_longitude=SPEC.home_longitude
    ).engine_params()
    first = Sent()
    assert nightly.run(LATE_DAY, SPEC.timezone, params, first, "/tests").published == [
        "phone1",
        "phone2",
    ]
    _late_fixes(pool)
    sent = Sent()
    report = check.run(TODAY, sent, "/tests")
    # phone1's day is sent again, with a new id and the late fixes in; phone2's is not.
    assert report.resummarized == [("phone1", LATE_DAY)]
    assert [event["type"] for event in sent] == [events.DAY_SUMMARIZED]
    before = DaySummarized.model_validate(first[0].get_data())
    after = DaySummarized.model_validate(sent[0].get_data())
    assert (after.device_id, after.day) == ("phone1", LATE_DAY)
    assert sent[0]["id"] != first[0]["id"]
    assert after.figures.points_used > before.figures.points_used
    # Once sent, not again.
    sent.clear()
    assert check.run(TODAY, sent, "/tests").resummarized == []
    assert sent == []
