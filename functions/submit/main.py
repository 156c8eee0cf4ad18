"""submit: accepts distance requests, records the job, queues it.

A CloudEvent (`distance.requested`, from the broker or straight from the ingress) is
answered with a binary-mode `job.accepted` CloudEvent, which a Knative broker publishes;
a plain JSON POST is answered 202 with the same data as JSON. Bad requests get 400 naming
the field, and nothing is recorded. DELETE /jobs/{id} cancels a queued or processing job
(409 once it has finished).
"""

from __future__ import annotations

import functools
import logging
import re
from http import HTTPStatus

import flask
import functions_framework
import psycopg
from pydantic import ValidationError

from shared import clients, config, events, telemetry, web
from shared.admission import RateLimiter, TooManyRequests, first_forwarded
from shared.contracts import MAX_IDEMPOTENCY_KEY, DistanceRequested, JobAccepted, Requester
from shared.http_function import HttpFunction
from shared.job_view import job_view
from shared.jobs import IdempotencyConflict, NotCancellable
from shared.logs import log_context
from shared.submission import JobNotFound, RequestError, Submission
from shared.submission import cancel as cancel_job
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
        max_pending=config.load(config.AdmissionSettings).max_pending_jobs,
    )


_function = HttpFunction(
    FUNCTION,
    (
        config.DatabaseSettings,
        config.AnalysisSettings,
        config.JobSettings,
        config.AdmissionSettings,
        config.EventSettings,
    ),
    _submission,
)


@functools.cache
def _limiter() -> RateLimiter:
    settings = config.load(config.AdmissionSettings)
    return RateLimiter(settings.request_rate_per_minute, settings.request_burst)


def _admit(request: flask.Request, source: str | None) -> None:
    """One token of the requester's bucket: its identity (a CloudEvent's source, with the
    caller the ingress names in X-Forwarded-For), else its address."""
    address = first_forwarded(request.headers.get("X-Forwarded-For"))
    if source is not None:
        requester = source if address is None else f"{source} for {address}"
    else:
        requester = address or request.remote_addr or "unknown"
    _limiter().take(requester)


def _from_event(request: flask.Request) -> flask.Response:
    event = events.parse(web.request_headers(request), request.get_data())
    if event["type"] != events.DISTANCE_REQUESTED:
        raise events.EventError(f"type: expected {events.DISTANCE_REQUESTED}, got {event['type']}")
    data = events.data_as(event, DistanceRequested)
    _admit(request, event["source"])
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
    _admit(request, None)
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


_JOB_PATH = re.compile(r"/jobs/([^/]+)/?")


def _cancel(request: flask.Request) -> flask.Response:
    """DELETE /jobs/{id}: cancel a queued or processing job (status stays read-only)."""
    match = _JOB_PATH.fullmatch(request.path)
    if match is None:
        raise web.HttpError(HTTPStatus.NOT_FOUND, f"{request.path}: only /jobs/{{job_id}}")
    job_id = web.parse_job_id(match[1])
    with telemetry.span("cancel job", attributes={"job.id": str(job_id)}):
        try:
            job = cancel_job(_function.service(), job_id, telemetry.traceparent())
        except JobNotFound as exc:
            raise web.HttpError(HTTPStatus.NOT_FOUND, str(exc)) from None
        except NotCancellable as exc:
            raise web.HttpError(
                HTTPStatus.CONFLICT, str(exc), job_status=exc.job.status.value
            ) from None
    with log_context(job_id=str(job.id)):
        log.info("job cancelled")
    return web.model_response(job_view(job))


def _serve(request: flask.Request) -> flask.Response:
    if (answer := _function.health(request)) is not None:
        return answer
    if request.method == "DELETE":
        return _cancel(request)
    if request.method != "POST":
        raise web.method_not_allowed(request, "POST, DELETE")
    try:
        return _accept(request)
    except TooManyRequests as exc:
        # 429 to the broker too: it retries later, which is the point.
        raise web.HttpError(
            HTTPStatus.TOO_MANY_REQUESTS,
            str(exc),
            headers={"Retry-After": str(exc.retry_after)},
            retry_after=exc.retry_after,
        ) from None


def _accept(request: flask.Request) -> flask.Response:
    if events.is_cloudevent(web.request_headers(request)):
        return _from_event(request)
    return _from_json(request)


@functions_framework.http
def submit(request: flask.Request) -> flask.Response:
    """Entry point (FUNCTION_TARGET=submit)."""
    return _handle(request)


_handle = web.guarded(_serve, max_body=web.SMALL_BODY, poison=(psycopg.DataError,))
