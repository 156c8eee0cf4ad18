"""Separate PostgreSQL roles, as deployed: the migrator owns the jobs schema; the role the
services log in as (DB_SERVICE_ROLE) may use the jobs table and read public.locations,
and nothing else: no DDL, no write to the recorder's data, no other table. The running
system uses exactly that role."""

from __future__ import annotations

import psycopg
import pytest
import urllib3

from shared.contracts import JobAccepted
from tests.conftest import ROLES, Database
from tests.reliability.conftest import Figures
from tests.stack import Stack

REFUSED = [
    "INSERT INTO public.locations SELECT * FROM public.locations LIMIT 1",
    "DELETE FROM public.locations",
    "CREATE TABLE otel_worker.extra (id int)",
    "ALTER TABLE otel_worker.jobs ADD COLUMN extra int",
    "DROP TABLE otel_worker.jobs",
    "TRUNCATE otel_worker.jobs",
    "SELECT count(*) FROM otel_worker.schema_migrations",
    "CREATE TABLE public.extra (id int)",
]


def test_the_services_role_may_use_the_jobs_and_read_the_fixes_only(
    reliable_stack: Stack, seeded: Database, score: Figures
) -> None:
    stack = reliable_stack
    reply = urllib3.request(
        "POST", stack.url("submit"), json={"date": "2024-03-20", "device_id": "phone3"}
    )
    job_id = JobAccepted.model_validate_json(reply.data).job.job_id
    assert stack.wait_finished(job_id).status == "completed"
    with stack.db() as conn:
        owner = conn.execute(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'otel_worker'"
        ).fetchone()
        logged_in = {
            name
            for (name,) in conn.execute(
                "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database()"
                " AND usename IS NOT NULL AND pid <> pg_backend_pid()"
            )
        }
    assert owner == (ROLES.migrator,)
    assert ROLES.service in logged_in  # the services' pools
    service = ROLES.dsn(seeded, ROLES.service)
    with psycopg.connect(service, autocommit=True, prepare_threshold=None) as conn:
        assert conn.execute("SELECT count(*) > 0 FROM public.locations").fetchone() == (True,)
        assert (
            conn.execute(
                "UPDATE otel_worker.jobs SET updated_at = updated_at WHERE id = %s", (job_id,)
            ).rowcount
            == 1
        )
    refused = 0
    for statement in REFUSED:
        with (
            psycopg.connect(service, autocommit=True, prepare_threshold=None) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute(statement)
        refused += 1
    score.jobs = 1
    score.note = f"{refused} statements refused to the services' role"
