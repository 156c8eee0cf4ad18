"""submit: accepts distance requests, records the job, queues it.

A CloudEvent (`distance.requested`, from the broker or straight from the ingress) is
answered with a binary-mode `job.accepted` CloudEvent, which a Knative broker publishes;
a plain JSON POST is answered 202 with the same data as JSON. Bad requests get 400 naming
the field, and nothing is recorded.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import flask
import functions_framework
from pydantic import ValidationError

from shared import clients, config, events, telemetry, web
from shared.contracts import MAX_IDEMPOTENCY_KEY, DistanceRequested, JobAccepted, Requester
from shared.http_function import HttpFunction
from shared.job_view import job_view
from shared.jobs import IdempotencyConflict
from shared.logs import log_context
from shared.submission import RequestError, Submission
from shared.submission import submit as submit_job

FUNCTION = "submit"
log = logging.getLogger(FUNCTION)


def _submission() -> Submission:
    return Submission(
        jobs=clients.jobs(),
        publisher=clients.publisher(),
        analysis=config.load(config.AnalysisSettings),
        limits=config.load(config.JobSettings),
        source=clients.event_source(FUNCTION),
    )


_function = HttpFunction(
    FUNCTION,
    (config.DatabaseSettings, config.AnalysisSettings, config.JobSettings, config.EventSettings),
    _submission,
)


def _from_event(request: flask.Request) -> flask.Response:
    event = events.parse(web.request_headers(request), request.get_data())
    if event["type"] != events.DISTANCE_REQUESTED:
        raise events.EventError(f"type: expected {events.DISTANCE_REQUESTED}, got {event['type']}")
    data = events.data_as(event, DistanceRequested)
    parent = {"traceparent": event["traceparent"]} if event.get("traceparent") else None
    with telemetry.span("submit distance.requested", parent=parent) as span:
        try:
            job, created = submit_job(
                _function.service(),
                data,
                requester=Requester(source=event["source"], id=event["id"]),
                idempotency_key=None,
                traceparent=telemetry.traceparent(),
            )
        except (RequestError, IdempotencyConflict) as exc:
            # A CloudEvent that can never succeed: 400, so the broker does not retry it.
            raise events.EventError(str(exc)) from None
        span.set_attribute("job.id", str(job.id))
        reply = events.new_event(
            events.JOB_ACCEPTED,
            JobAccepted(created=created, job=job_view(job)),
            source=_function.service().source,
            subject=str(job.id),
            traceparent=telemetry.traceparent(),
        )
        # Inside the span: the line carries the caller's trace id.
        with log_context(job_id=str(job.id)):
            log.info("job accepted", extra={"job_created": created, "requester": event["id"]})
    return web.event_response(reply)


def _header_key(request: flask.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise web.HttpError(
            HTTPStatus.BAD_REQUEST,
            f"Idempotency-Key: must be 1 to {MAX_IDEMPOTENCY_KEY} characters (got {len(key)})",
        )
    return key


def _from_json(request: flask.Request) -> flask.Response:
    try:
        data = DistanceRequested.model_validate_json(request.get_data() or b"{}")
    except ValidationError as exc:
        raise web.HttpError(HTTPStatus.BAD_REQUEST, events.describe(exc)) from None
    key = _header_key(request)
    with telemetry.span("submit json"):
        try:
            job, created = submit_job(
                _function.service(),
                data,
                requester=None,
                idempotency_key=key,
                traceparent=telemetry.traceparent(),
            )
        except RequestError as exc:
            raise web.HttpError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        except IdempotencyConflict as exc:
            raise web.HttpError(HTTPStatus.CONFLICT, str(exc)) from None
    body = JobAccepted(created=created, job=job_view(job))
    return web.model_response(body, HTTPStatus.ACCEPTED if created else HTTPStatus.OK)


def _serve(request: flask.Request) -> flask.Response:
    if (answer := _function.health(request)) is not None:
        return answer
    if request.method != "POST":
        raise web.method_not_allowed(request, "POST")
    if events.is_cloudevent(web.request_headers(request)):
        return _from_event(request)
    return _from_json(request)


@functions_framework.http
def submit(request: flask.Request) -> flask.Response:
    """Entry point (FUNCTION_TARGET=submit)."""
    return _handle(request)


_handle = web.guarded(_serve, max_body=web.SMALL_BODY)
