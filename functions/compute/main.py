"""compute: turns a `job.queued` event into a computed job.

Claims the job under a lease, reads its points, runs the engine, uploads the CSV and the
JSON summary, completes the job (fenced by the lease token) and replies with the outcome
event (`job.completed` / `job.failed`), which the broker publishes. Answers the broker by
its rules: 2xx once the outcome is committed (also for a duplicate delivery of a finished
job), 409 while another attempt holds the lease, 5xx when a dependency is down, 400 for
an event that can never succeed.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import flask
import functions_framework
import psycopg
import pydantic_core
from psycopg.types.json import set_json_dumps

from shared import clients, config, events, telemetry, web
from shared.computation import Computation, Outcome
from shared.contracts import DayRequested, JobQueued
from shared.http_function import HttpFunction
from shared.logs import log_context

FUNCTION = "compute"
log = logging.getLogger(FUNCTION)


def _computation() -> Computation:
    # A year's summary is megabytes of JSON: pydantic's serialiser writes it several
    # times faster than the standard library's, for every jsonb this process stores.
    set_json_dumps(pydantic_core.to_json)
    return Computation(
        jobs=clients.jobs(),
        connection=clients.pool().connection,
        objects=clients.objects(),
        storage=config.load(config.StorageSettings),
        worker=clients.worker_name(),
        source=clients.event_source(FUNCTION),
        lease_seconds=config.load(config.JobSettings).job_lease_seconds,
        publisher=clients.publisher(),
    )


_function = HttpFunction(
    FUNCTION,
    (config.DatabaseSettings, config.StorageSettings, config.JobSettings, config.EventSettings),
    _computation,
)


def _serve(request: flask.Request) -> flask.Response:
    if (answer := _function.health(request)) is not None:
        return answer
    if request.method != "POST":
        raise web.method_not_allowed(request, "POST")
    event = events.parse(web.request_headers(request), request.get_data())
    if event["type"] not in (events.JOB_QUEUED, events.DAY_REQUESTED):
        raise events.EventError(
            f"type: expected {events.JOB_QUEUED} or {events.DAY_REQUESTED}, got {event['type']}"
        )
    parent = {"traceparent": event["traceparent"]} if event.get("traceparent") else None
    computation = _function.service()
    if event["type"] == events.DAY_REQUESTED:
        day = events.data_as(event, DayRequested)
        with (
            log_context(job_id=str(day.job_id)),
            telemetry.span("compute day", parent=parent) as span,
        ):
            span.set_attribute("job.id", str(day.job_id))
            outcome = computation.run_day(day.job_id, day.device_id, day.day, day.last_day)
            _handled(outcome)
    else:
        job_id = events.data_as(event, JobQueued).job_id
        with (
            log_context(job_id=str(job_id)),
            telemetry.span("compute job", parent=parent) as span,
        ):
            span.set_attribute("job.id", str(job_id))
            outcome = computation.run(job_id)
            _handled(outcome)
    if outcome.event is not None:
        return web.event_response(outcome.event)
    if outcome.status < HTTPStatus.BAD_REQUEST:
        return flask.Response(status=outcome.status)
    return web.error_response(outcome.status, outcome.detail)


def _handled(outcome: Outcome) -> None:
    """The delivery's log line, inside its job's log context and span."""
    log.info("delivery handled", extra={"status": outcome.status, "detail": outcome.detail})


@functions_framework.http
def compute(request: flask.Request) -> flask.Response:
    """Entry point (FUNCTION_TARGET=compute)."""
    return _handle(request)


_handle = web.guarded(_serve, max_body=web.SMALL_BODY, poison=(psycopg.DataError,))
