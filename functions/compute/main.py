"""compute: turns a `job.queued` event into a computed job.

Claims the job under a lease, reads its points, runs the engine, uploads the CSV and the
JSON summary, completes the job (fenced by the lease token) and replies with the outcome
event (`job.completed` / `job.failed`), which the broker publishes. Answers the broker by
its rules: 2xx once the outcome is committed (also for a duplicate delivery of a finished
job), 409 while another attempt holds the lease, 5xx when a dependency is down, 400 for
an event that can never succeed.
"""

from __future__ import annotations

import functools
import logging
from http import HTTPStatus

import flask
import functions_framework
import psycopg

from shared import config, events, resources, serving, telemetry, web
from shared.computation import Computation
from shared.contracts import JobQueued
from shared.db import DatabaseUnavailable
from shared.logs import log_context
from shared.storage import StorageUnavailable

FUNCTION = "compute"
serving.bound()  # request size and slow-client limits of its HTTP server
log = logging.getLogger(FUNCTION)
config.require(
    FUNCTION,
    config.DatabaseSettings,
    config.StorageSettings,
    config.JobSettings,
    config.EventSettings,
    config.TelemetrySettings,
)


@functools.cache
def _computation() -> Computation:
    telemetry.start(FUNCTION, config.load(config.TelemetrySettings), database=True)
    return Computation(
        jobs=resources.jobs(),
        connection=resources.pool().connection,
        objects=resources.objects(),
        storage=config.load(config.StorageSettings),
        worker=resources.worker_name(),
        source=resources.event_source(FUNCTION),
        lease_seconds=config.load(config.JobSettings).job_lease_seconds,
    )


def _ready() -> None:
    _computation()
    with resources.pool().connection() as conn:
        conn.execute("SELECT 1")


def _serve(request: flask.Request) -> flask.Response:
    _computation()  # logging, telemetry and clients of this process (no connection yet)
    if (answer := web.health(request, _ready)) is not None:
        return answer
    if request.method != "POST":
        raise web.method_not_allowed(request, "POST")
    event = events.parse(web.request_headers(request), request.get_data())
    if event["type"] != events.JOB_QUEUED:
        raise events.EventError(f"type: expected {events.JOB_QUEUED}, got {event['type']}")
    job_id = events.data_as(event, JobQueued).job_id
    parent = {"traceparent": event["traceparent"]} if event.get("traceparent") else None
    computation = _computation()
    with log_context(job_id=str(job_id)), telemetry.span("compute job", parent=parent) as span:
        span.set_attribute("job.id", str(job_id))
        outcome = computation.run(job_id)
        log.info("delivery handled", extra={"status": outcome.status, "detail": outcome.detail})
    if outcome.event is not None:
        return web.event_response(outcome.event)
    if outcome.status < HTTPStatus.BAD_REQUEST:
        return flask.Response(status=outcome.status)
    return web.error_response(outcome.status, outcome.detail)


@functions_framework.http
def compute(request: flask.Request) -> flask.Response:
    """Entry point (FUNCTION_TARGET=compute)."""
    return _handle(request)


_handle = web.guarded(
    _serve,
    transient=(DatabaseUnavailable, StorageUnavailable),
    max_body=web.SMALL_BODY,
    poison=(psycopg.DataError,),
)
