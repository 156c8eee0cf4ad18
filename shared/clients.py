"""The clients a serving process uses, each created on first use.

functions-framework imports a function's module in gunicorn's master and then forks the
workers, so nothing here connects, starts a thread or opens a socket at import: each
accessor builds its client the first time a request needs it, in the serving process,
and keeps it for the life of that process.
"""

from __future__ import annotations

import functools
import os
import socket

from shared import config
from shared.db import LazyPool
from shared.events import Publisher
from shared.jobs import JobStore
from shared.storage import ObjectStore
from shared.waiting import JobWaits


@functools.cache
def pool() -> LazyPool:
    """The PostgreSQL connection pool (opened by its first `connection()`)."""
    return LazyPool(config.load(config.DatabaseSettings))


@functools.cache
def jobs() -> JobStore:
    """The jobs store over the pool."""
    database = config.load(config.DatabaseSettings)
    return JobStore(pool().connection, config.load(config.JobSettings), schema=database.jobs_schema)


@functools.cache
def job_waits() -> JobWaits:
    """Waits for jobs to finish, heard on DATABASE_LISTEN_URL (its listener starts with the
    first wait)."""
    settings = config.load(config.WaitSettings)
    listen = settings.database_listen_url
    return JobWaits(
        listen.get_secret_value() if listen else None,
        config.load(config.DatabaseSettings).jobs_schema,
        max_waits=settings.wait_slots,
        max_seconds=settings.max_wait_seconds,
    )


@functools.cache
def objects() -> ObjectStore:
    """The object store client."""
    return ObjectStore(config.load(config.StorageSettings))


@functools.cache
def publisher() -> Publisher | None:
    """Publishes to the broker at K_SINK; None where no sink is bound (events then wait for
    the sweep, which re-publishes what was never announced)."""
    settings = config.load(config.EventSettings)
    if settings.k_sink is None:
        return None
    return Publisher(
        str(settings.k_sink),
        attempts=settings.publish_attempts,
        timeout=settings.publish_timeout_seconds,
    )


def event_source(function: str) -> str:
    """The CloudEvents `source` of events a function emits."""
    return f"{config.load(config.EventSettings).event_source.rstrip('/')}/{function}"


def worker_name() -> str:
    """Who holds a lease: the pod (host) and process, for operators reading the jobs table."""
    return f"{socket.gethostname()}:{os.getpid()}"
