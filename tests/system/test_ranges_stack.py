"""A range job fanned out over several compute processes of the real stack (dev broker,
PostgreSQL through PgBouncer, SeaweedFS): a compute killed while it works on its days
loses nothing and counts nothing twice."""

from __future__ import annotations

import datetime as dt
import signal
import time
from collections.abc import Iterator

import pytest
import urllib3

from shared.engine import EngineParams, day_window
from shared.engine.assembly import day_by_day
from shared.locations import read_points
from tests.conftest import Database, S3Server
from tests.stack import SEED, Stack, start_stack

FIRST, LAST = dt.date(2024, 3, 4), dt.date(2024, 3, 24)  # three weeks over the DST change
SCHEMA = "otel_worker_ranges"


@pytest.fixture
def workers(seeded: Database, s3: S3Server) -> Iterator[Stack]:
    """The stack with two compute processes and short leases (a killed one's days are
    taken over after 5 s), its jobs in a schema of their own: the session's stack, whose
    sweep would take the job once its lease expired, never sees them."""
    started = start_stack(seeded, s3, compute_workers=2, JOB_LEASE_SECONDS="5", JOBS_SCHEMA=SCHEMA)
    yield started
    started.supervisor.stop()


def test_a_compute_killed_mid_range_loses_no_day_and_counts_none_twice(
    workers: Stack,
) -> None:
    schema = SCHEMA
    # Every day to be computed: none kept by an earlier run over these days.
    with workers.db() as conn:
        conn.execute(f"DELETE FROM {schema}.day_results WHERE day BETWEEN %s AND %s", (FIRST, LAST))
    reply = urllib3.request(
        "POST",
        workers.url("submit"),
        json={"date": FIRST.isoformat(), "end_date": LAST.isoformat()},
    )
    assert reply.status in (200, 201, 202), reply.data
    job_id = reply.json()["job"]["job_id"]
    with workers.db() as conn:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = conn.execute(
                f"SELECT count(*) FILTER (WHERE status = 'processing'), count(*)"
                f" FROM {schema}.job_days WHERE job_id = %s",
                (job_id,),
            ).fetchone()
            if row is not None and row[0]:
                break
            time.sleep(0.02)
    assert row is not None
    assert row[0], "no day was being computed"
    # The pods die with days in hand: SIGKILL, no goodbye; Knative starts others.
    for name in ("compute", "compute-2"):
        workers.supervisor.services[name].signal(signal.SIGKILL)
    for name in ("compute", "compute-2"):
        workers.supervisor.restart(name)
    view = workers.wait_finished(job_id, timeout=180)
    assert view.status == "completed", view.error_message
    assert view.result is not None
    with workers.db() as conn:
        days = conn.execute(
            f"SELECT status, count(*) FROM {schema}.job_days WHERE job_id = %s GROUP BY 1",
            (job_id,),
        ).fetchall()
        kept = conn.execute(
            f"SELECT device_id, day, count(*) FROM {schema}.day_results"
            " WHERE day BETWEEN %s AND %s GROUP BY 1, 2",
            (FIRST, LAST),
        ).fetchall()
    n_cells = SEED.devices * ((LAST - FIRST).days + 1)
    assert days == [("done", n_cells)]
    assert len(kept) == n_cells
    assert {count for _, _, count in kept} == {1}
    # The figures are a single assembly's over the same fixes: nothing lost, none twice.
    with workers.db() as conn:
        stored = conn.execute(
            f"SELECT parameters FROM {schema}.jobs WHERE id = %s", (job_id,)
        ).fetchone()
    assert stored is not None
    params = EngineParams.model_validate(stored[0])
    window = day_window(FIRST, LAST, SEED.timezone)
    with workers.db() as conn:
        points = read_points(
            conn,
            dt.datetime(2024, 3, 2, tzinfo=dt.UTC),
            dt.datetime(2024, 3, 27, tzinfo=dt.UTC),
            None,
        )
    expected = day_by_day(points, window, params).model_dump(mode="json")
    assert view.result == expected
    # Its report page draws from the range's chart data, as a day's does.
    page = urllib3.request("GET", f"{workers.url('status')}/jobs/{job_id}/report")
    assert page.status == 200, page.data[:300]
    assert b"<svg" in page.data
