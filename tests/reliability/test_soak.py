"""Soak: submits, repeated submits (same idempotency key), cancels and status polls at a
steady rate the system sustains, for SOAK_S seconds (30 in `make test`; `SOAK_S=120 make
test-reliability` for longer). Zero errors, zero lost jobs, zero duplicated jobs; the p99
latency of a status lookup is reported."""

from __future__ import annotations

import datetime as dt
import os
import random
import threading
import time
import uuid

import urllib3

from shared.contracts import JobAccepted
from tests.reliability.conftest import Figures
from tests.stack import Stack

SOAK_S = float(os.environ.get("SOAK_S", "30"))
SUBMIT_INTERVAL_S = 0.4
"""One request every 0.4 s: a day of one device each, about what compute finishes meanwhile
on a shared two-core machine."""
POLLERS = 2


def test_soak_mixed_load_loses_and_duplicates_nothing(
    reliable_stack: Stack, score: Figures
) -> None:
    stack = reliable_stack
    http = urllib3.PoolManager(retries=False, timeout=30)
    rng = random.Random(24)
    jobs: dict[str, uuid.UUID] = {}  # idempotency key -> job
    cancelled: set[uuid.UUID] = set()
    errors: list[str] = []
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        local = random.Random(threading.get_ident())
        while not stop.is_set():
            if not jobs:
                time.sleep(0.05)
                continue
            job_id = local.choice(list(jobs.values()))
            started = time.monotonic()
            answer = http.request("GET", f"{stack.url('status')}/jobs/{job_id}")
            latencies.append(time.monotonic() - started)
            if answer.status != 200:
                errors.append(f"status {answer.status}: {answer.data[:200]!r}")
            time.sleep(0.02)

    pollers = [threading.Thread(target=poll, daemon=True) for _ in range(POLLERS)]
    for poller in pollers:
        poller.start()
    repeats = 0
    deadline = time.monotonic() + SOAK_S
    try:
        while time.monotonic() < deadline:
            roll = rng.random()
            if roll < 0.15 and jobs:  # a caller repeats a request: the same job back
                key = rng.choice(list(jobs))
                repeats += 1
            elif roll < 0.25 and jobs:  # a caller cancels: accepted, or too late (409)
                job_id = list(jobs.values())[-1]  # the newest: most likely still running
                answer = http.request("DELETE", f"{stack.url('submit')}/jobs/{job_id}")
                if answer.status == 200:
                    cancelled.add(job_id)
                elif answer.status != 409:
                    errors.append(f"cancel {answer.status}: {answer.data[:200]!r}")
                time.sleep(SUBMIT_INTERVAL_S)
                continue
            else:
                key = f"soak-{len(jobs)}"
            day = dt.date(2024, 3, 1) + dt.timedelta(days=int(key.rsplit("-", 1)[1]) % 28)
            answer = http.request(
                "POST",
                stack.url("submit"),
                json={"date": day.isoformat(), "device_id": f"phone{1 + len(key) % 3}"},
                headers={"Idempotency-Key": key},
            )
            if answer.status not in {200, 202}:
                errors.append(f"submit {answer.status}: {answer.data[:200]!r}")
            else:
                job_id = JobAccepted.model_validate_json(answer.data).job.job_id
                if jobs.setdefault(key, job_id) != job_id:
                    errors.append(f"key {key} named a second job")
            time.sleep(SUBMIT_INTERVAL_S)
    finally:
        stop.set()
        for poller in pollers:
            poller.join(timeout=30)
    final = {job_id: stack.wait_finished_or_cancelled(job_id, 120) for job_id in jobs.values()}
    with stack.db() as conn:
        rows = conn.execute(
            "SELECT idempotency_key, count(*) FROM otel_worker.jobs"
            " WHERE idempotency_key LIKE 'soak-%%' GROUP BY 1"
        ).fetchall()
    stored = dict(rows)
    lost = [key for key in jobs if key not in stored]
    duplicated = [key for key, count in stored.items() if count != 1]
    unfinished = [
        str(j) for j, view in final.items() if view.status not in {"completed", "cancelled"}
    ]
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
    score.jobs, score.lost, score.duplicates = len(jobs), len(lost), len(duplicated)
    score.latency = f"status p99 {p99 * 1000:.0f} ms"
    score.note = (
        f"{SOAK_S:.0f} s: {repeats} repeats, {len(cancelled)} cancelled, "
        f"{len(latencies)} polls, {len(errors)} errors"
    )
    assert errors == []
    assert (lost, duplicated, unfinished) == ([], [], [])
    assert all(final[job_id].status == "cancelled" for job_id in cancelled)
