"""The whole system for tests: the supervisor of `otel-worker dev` with every function as
its own process, on the session's PostgreSQL (through PgBouncer) and S3 server, over a
month of generated fixes for three devices."""

from __future__ import annotations

import datetime as dt
import io
import os
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
import urllib3

from shared import config, events
from shared.contracts import JobView
from shared.dev.runner import Supervisor
from shared.dev.stack import S3Identity, wait_until
from shared.dev.tracks import TrackSpec
from shared.maintenance import migrate_jobs, sweep_once
from tests.conftest import Database, Roles, S3Server

SEED = TrackSpec(seed=7, start=dt.date(2024, 3, 1), days=31, devices=3)


@dataclass
class Stack:
    supervisor: Supervisor
    env: dict[str, str]
    database: Database
    s3: S3Server
    bucket: str

    @property
    def broker(self) -> str:
        return self.supervisor.urls["broker"]

    def url(self, service: str) -> str:
        return self.supervisor.urls[service]

    def job(self, job_id: uuid.UUID | str) -> JobView:
        response = urllib3.request("GET", f"{self.url('status')}/jobs/{job_id}")
        assert response.status == 200, response.data
        return JobView.model_validate_json(response.data)

    def wait_finished(self, job_id: uuid.UUID | str, timeout: float = 60) -> JobView:
        seen: list[JobView] = []

        def finished() -> bool:
            seen.append(self.job(job_id))
            return seen[-1].status in {"completed", "failed"}

        wait_until(finished, timeout, f"job {job_id}", interval=0.05)
        return seen[-1]

    def wait_finished_or_cancelled(self, job_id: uuid.UUID | str, timeout: float = 60) -> JobView:
        seen: list[JobView] = []

        def final() -> bool:
            seen.append(self.job(job_id))
            return seen[-1].status in {"completed", "failed", "cancelled"}

        wait_until(final, timeout, f"job {job_id}", interval=0.05)
        return seen[-1]

    def objects(self) -> list[str]:
        client = self.s3.client()
        return sorted(o.object_name or "" for o in client.list_objects(self.bucket, recursive=True))

    def db(self) -> psycopg.Connection[tuple[Any, ...]]:
        return self.database.connect()


def request_event(
    data: dict[str, Any], event_id: str | None = None
) -> tuple[dict[str, str], bytes]:
    event = events.CloudEvent(
        {
            "type": events.DISTANCE_REQUESTED,
            "source": "/tests/pipeline",
            "id": event_id or str(uuid.uuid4()),
            "datacontenttype": "application/json",
        },
        data,
    )
    return events.binary(event)


def post(
    url: str, headers: dict[str, str], body: bytes, timeout: float = 30
) -> urllib3.BaseHTTPResponse:
    """One POST, no retries: the tests judge the first answer."""
    return urllib3.request("POST", url, headers=headers, body=body, timeout=timeout, retries=False)


def dead_letter_tries(stack: Stack, data: dict[str, Any], request_id: str) -> list[tuple[int, str]]:
    """Send a request event (id `request_id`) to the broker, wait until it is dead-lettered,
    and return the (status, outcome) of each delivery attempt it took."""
    headers, body = request_event(data, request_id)
    assert post(stack.broker, headers, body).status == 202
    broker = stack.supervisor.broker
    assert broker is not None

    def dead_lettered() -> bool:
        return any(h.event_id == request_id and h.outcome == "dead-lettered" for h in broker.hops)

    wait_until(dead_lettered, 20, "the dead letter")
    return [
        (h.status, h.outcome) for h in broker.hops if h.event_id == request_id and h.attempt > 0
    ]


def stack_env(database: Database, s3: S3Server, bucket: str, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k not in config.variable_names()}
    return {
        **keep,
        "DATABASE_URL": database.dsn,
        "MINIO_ENDPOINT": s3.endpoint,
        "MINIO_REGION": s3.region,
        "MINIO_BUCKET": bucket,
        # As deployed: the bucket exists, and neither function's identity may create one.
        "MINIO_CREATE_BUCKET": "false",
        "JOB_LEASE_SECONDS": "10",
        "JOB_REPUBLISH_SECONDS": "1",
        "LOG_LEVEL": "WARNING",
        "DB_STARTUP_RETRY_SECONDS": "5",
        # The suite sends hundreds of requests from one address: admission is tested apart.
        "REQUEST_BURST": "100000",
        "MAX_PENDING_JOBS": "100000",
        **extra,
    }


def start_stack(
    database: Database,
    s3: S3Server,
    out: io.TextIOBase | None = None,
    time_scale: float = 0.05,
    roles: Roles | None = None,
    compute_workers: int = 1,
    **extra: str,
) -> Stack:
    """All services, the dev broker (its backoffs scaled by `time_scale`: short for tests)
    and a sweep every 0.5 s, with `extra` settings for every service. compute and status
    use the object store with the rights they are deployed with: compute may only write,
    status only read (and list). With `roles`, as deployed too: the migrations run as the
    migrator, which grants the service role what the services (and the sweep) log in as."""
    bucket = f"pipeline-{uuid.uuid4().hex[:10]}"
    s3.client().make_bucket(bucket)
    service_dsn = database.dsn if roles is None else roles.dsn(database, roles.service)
    env = stack_env(database, s3, bucket, DATABASE_URL=service_dsn, **extra)
    # A stack may keep its jobs in a schema of its own (JOBS_SCHEMA), which no other
    # stack's sweep then takes jobs from.
    schema = extra.get("JOBS_SCHEMA", config.DatabaseSettings.model_fields["jobs_schema"].default)
    settings = config.DatabaseSettings(database_url=service_dsn, jobs_schema=schema)
    owner = settings
    if roles is not None:
        owner = config.DatabaseSettings(
            database_url=roles.dsn(database, roles.migrator),
            db_service_role=roles.service,
            jobs_schema=schema,
        )
    # The sweep (run by this process) follows the services' job settings, so a caller that
    # sets JOB_REPUBLISH_SECONDS or JOB_MAX_ATTEMPTS changes both alike.
    jobs = config.JobSettings.model_validate(
        {name: env[name.upper()] for name in config.JobSettings.model_fields if name.upper() in env}
    )
    supervisor = Supervisor(
        env=env,
        out=out or Discard(),
        migrate=lambda: migrate_jobs(owner),
        sweep=lambda sink: sweep_once(settings, jobs, config.EventSettings(k_sink=sink)),
        sweep_interval=0.5,
        time_scale=time_scale,
        compute_workers=compute_workers,
        service_env={
            "compute": _credentials(s3.writer),
            "status": _credentials(s3.reader),
        },
    ).start()
    return Stack(supervisor, env, database, s3, bucket)


def _credentials(identity: S3Identity) -> dict[str, str]:
    return {"MINIO_ACCESS_KEY": identity.access_key, "MINIO_SECRET_KEY": identity.secret_key}


class Discard(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)
