"""Retention removes an expired job's objects with its row, by the sweep, and never an
object a job that stays still names (an object two jobs share)."""

from __future__ import annotations

import uuid

import urllib3
from pydantic import SecretStr

from shared import config, maintenance
from shared.contracts import JobAccepted
from shared.db import connect
from shared.storage import ObjectStore
from tests.reliability.conftest import Figures
from tests.stack import Stack


def _completed(stack: Stack, day: str) -> uuid.UUID:
    reply = urllib3.request(
        "POST", stack.url("submit"), json={"date": day, "device_id": "phone2"}, retries=False
    )
    assert reply.status == 202, reply.data
    job_id = JobAccepted.model_validate_json(reply.data).job.job_id
    assert stack.wait_finished(job_id).status == "completed"
    return job_id


def test_the_sweep_removes_expired_jobs_objects_but_not_a_shared_one(
    reliable_stack: Stack, score: Figures
) -> None:
    stack = reliable_stack
    expired, kept = _completed(stack, "2024-03-14"), _completed(stack, "2024-03-15")
    before = stack.objects()
    with stack.db() as conn:
        # The job that stays also names the expired one's summary (a shared object).
        row = conn.execute(
            "UPDATE otel_worker.jobs k SET summary_key = e.summary_key"
            " FROM otel_worker.jobs e WHERE k.id = %s AND e.id = %s RETURNING k.summary_key",
            (kept, expired),
        ).fetchone()
        assert row is not None
        shared_key = row[0]
        conn.execute(
            "UPDATE otel_worker.jobs SET completed_at = now() - interval '40 days' WHERE id = %s",
            (expired,),
        )
    # The sweep, with the object store rights compute has (write, which includes delete).
    storage = config.StorageSettings(
        minio_endpoint=stack.s3.endpoint,
        minio_region=stack.s3.region,
        minio_bucket=stack.bucket,
        minio_access_key=SecretStr(stack.s3.writer.access_key),
        minio_secret_key=SecretStr(stack.s3.writer.secret_key),
        minio_create_bucket=False,
    )
    database = config.DatabaseSettings(database_url=SecretStr(stack.database.dsn))
    with connect(database) as conn:
        report = maintenance.sweep(
            conn, database, config.JobSettings(), config.EventSettings(),
            objects=ObjectStore(storage),
        )  # fmt: skip
    after = stack.objects()
    assert report.pruned == 1
    assert [job.id for job in report.pruned_jobs] == [expired]
    gone = sorted(set(before) - set(after))
    assert gone
    assert all(str(expired) in key for key in gone)
    assert shared_key in after  # still named by the job that stays
    assert [key for key in after if str(expired) in key] == [shared_key]
    assert [key for key in after if str(kept) in key] == [key for key in before if str(kept) in key]
    assert report.objects_removed == len(gone)
    with stack.db() as conn:
        assert conn.execute(
            "SELECT count(*) FROM otel_worker.jobs WHERE id = %s", (expired,)
        ).fetchone() == (0,)
    score.jobs, score.lost = 2, 0
    score.note = f"{len(gone)} objects removed with the row, 1 shared kept"
