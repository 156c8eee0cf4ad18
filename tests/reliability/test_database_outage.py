"""A live database outage: the PostgreSQL behind PgBouncer is stopped mid-jobs and started
again. Meanwhile the services answer 503 (and stay alive: liveness holds, readiness does
not); afterwards they serve again without a restart, and every job, those in flight and
those retried by their callers, ends completed exactly once."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import psycopg
import pytest
import urllib3

from shared.contracts import JobAccepted
from shared.dev.stack import PgBouncer, http_status, wait_until
from shared.dev.tracks import TrackSpec, generate
from shared.locations import write_points
from tests.conftest import Database, S3Server
from tests.reliability.conftest import LEASE_SECONDS, Figures
from tests.reliability.postgres import OwnedPostgres
from tests.stack import Stack, start_stack

DAYS = [dt.date(2024, 3, 1) + dt.timedelta(days=k) for k in range(6)]


@pytest.fixture(scope="module")
def owned() -> Iterator[OwnedPostgres]:
    server = OwnedPostgres().create()
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            write_points(conn, generate(TrackSpec(seed=7, start=DAYS[0], days=7)).points)
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def outage_stack(owned: OwnedPostgres, s3: S3Server) -> Iterator[Stack]:
    # As DEPLOYMENT.md advises: a query waits at most 5 s for a server (then the caller
    # gets 503 instead of hanging), and a failed login is retried after 2 s, not 15.
    bouncer = PgBouncer(
        server_host="127.0.0.1",
        server_port=owned.port,
        dbname="postgres",
        user="postgres",
        settings={"query_wait_timeout": 5, "server_login_retry": 2},
    ).start()
    database = Database(bouncer.dsn, "127.0.0.1", bouncer.port, "postgres", "postgres")
    stack = start_stack(database, s3, JOB_LEASE_SECONDS=str(LEASE_SECONDS))
    try:
        yield stack
    finally:
        stack.supervisor.stop()
        bouncer.stop()


def _submit(stack: Stack, day: dt.date, key: str) -> urllib3.BaseHTTPResponse:
    return urllib3.request(
        "POST",
        stack.url("submit"),
        json={"date": day.isoformat(), "device_id": "phone1"},
        headers={"Idempotency-Key": key},
        retries=False,
        timeout=30,
    )


def test_services_answer_503_during_an_outage_and_recover_without_restart(
    outage_stack: Stack, owned: OwnedPostgres, score: Figures
) -> None:
    stack = outage_stack
    pids = {name: s.process.pid for name, s in stack.supervisor.services.items() if s.process}
    before = {}
    for k, day in enumerate(DAYS[:4]):
        reply = _submit(stack, day, f"outage-{k}")
        assert reply.status == 202, reply.data
        before[f"outage-{k}"] = JobAccepted.model_validate_json(reply.data).job.job_id

    owned.stop()
    try:
        during = _submit(stack, DAYS[4], "outage-4")
        assert during.status == 503, during.data
        assert b"PostgreSQL" in during.data  # says which dependency is down
        looked_up = urllib3.request(
            "GET", f"{stack.url('status')}/jobs/{before['outage-0']}", retries=False
        )
        assert looked_up.status == 503, looked_up.data
        for name in ("submit", "compute", "status"):
            # Alive, so not restarted; submit and compute not ready, so sent no traffic
            # (status answers readiness without the database: it can still say 503 itself).
            assert http_status(f"{stack.url(name)}/healthz", timeout=10) == 200, name
            if name != "status":
                assert http_status(f"{stack.url(name)}/readyz", timeout=10) == 503, name
    finally:
        owned.start()
    restarted = time.monotonic()

    # The callers retry what was refused, and one repeats a request that had succeeded.
    retried: list[urllib3.BaseHTTPResponse] = []

    def accepted() -> bool:
        retried.append(_submit(stack, DAYS[4], "outage-4"))
        return retried[-1].status == 202

    wait_until(accepted, 60, "submit after the outage", interval=0.2)
    recovery = time.monotonic() - restarted
    again = _submit(stack, DAYS[0], "outage-0")
    assert again.status == 200, again.data
    assert JobAccepted.model_validate_json(again.data).job.job_id == before["outage-0"]
    after = JobAccepted.model_validate_json(retried[-1].data).job.job_id
    finished = [stack.wait_finished(job_id, timeout=90) for job_id in [*before.values(), after]]

    assert [job.status for job in finished] == ["completed"] * 5, [
        job.error_message for job in finished
    ]
    with stack.db() as conn:
        rows = conn.execute("SELECT idempotency_key FROM otel_worker.jobs").fetchall()
    keys = sorted(key for (key,) in rows)
    assert keys == [f"outage-{k}" for k in range(5)]  # none lost, none twice
    now = {name: s.process.pid for name, s in stack.supervisor.services.items() if s.process}
    assert now == pids  # recovered without a restart
    score.jobs, score.lost, score.duplicates = 5, 5 - len(set(keys)), len(keys) - len(set(keys))
    score.latency = f"{recovery:.1f} s to recover"
