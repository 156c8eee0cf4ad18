"""status: jobs by id, job listings, reports, presigned downloads, the dead-letter sink.

GET /jobs/{id}, GET /jobs/{id}/report (an HTML page), GET
/jobs?status=&date=&device_id=&limit=&offset= (newest first, with the count of every
match), GET /download/{job_id} (302 to a fresh presigned CSV URL; also by
the CSV's basename, so old relative links keep working, and /download/{job_id}/summary),
POST /dead-letters (events the broker gave up on), /healthz and /readyz.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import uuid
from http import HTTPStatus
from urllib.parse import quote

import flask
import functions_framework
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

from shared import config, events, resources, serving, telemetry, web
from shared.contracts import JOB_STATUSES, JobPage, parse_device_id, parse_local_date
from shared.db import DatabaseUnavailable
from shared.jobs import MAX_LIST_OFFSET, Job, JobStatus, JobStore
from shared.storage import (
    ObjectMissing,
    ObjectStore,
    ResultKeys,
    StorageUnavailable,
    short_id_of,
)
from shared.views import job_view

FUNCTION = "status"
serving.bound()  # request size and slow-client limits of its HTTP server
log = logging.getLogger(FUNCTION)
config.require(
    FUNCTION,
    config.DatabaseSettings,
    config.StorageSettings,
    config.JobSettings,
    config.TelemetrySettings,
)

ROUTES = Map(
    [
        Rule("/jobs", endpoint="list", methods=["GET"]),
        Rule("/jobs/<job_id>", endpoint="job", methods=["GET"]),
        Rule("/jobs/<job_id>/report", endpoint="report", methods=["GET"]),
        Rule("/download/<name>", endpoint="download", methods=["GET"]),
        Rule("/download/<name>/summary", endpoint="download_summary", methods=["GET"]),
        Rule("/dead-letters", endpoint="dead_letter", methods=["POST"]),
    ],
    strict_slashes=False,
)


@functools.cache
def _started() -> tuple[JobStore, ObjectStore]:
    telemetry.start(FUNCTION, config.load(config.TelemetrySettings), database=True)
    return resources.jobs(), resources.objects()


def _ready() -> None:
    # Ready once its clients are built, whatever the database's state: status is also the
    # broker's dead-letter sink, which needs no database, and a status out of rotation
    # would leave callers waiting on Knative's activator instead of a prompt 503.
    _started()


def _job_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise web.HttpError(HTTPStatus.BAD_REQUEST, f"job_id: {text!r} is not a UUID") from None


def _existing(jobs: JobStore, job_id: uuid.UUID) -> Job:
    job = jobs.get(job_id)
    if job is None:
        raise web.HttpError(HTTPStatus.NOT_FOUND, f"job {job_id} not found")
    return job


_WHOLE = re.compile(r"-?[0-9]+")
"""ASCII digits only: int() would also take "+5", "1_0", " 5" and non-ASCII digits."""


def _int(request: flask.Request, name: str, most: int | None = None) -> int:
    raw = request.args.get(name, "0") or "0"
    if not _WHOLE.fullmatch(raw):
        raise web.HttpError(HTTPStatus.BAD_REQUEST, f"{name}: {raw!r} is not a whole number")
    value = int(raw)
    if value < 0:
        raise web.HttpError(HTTPStatus.BAD_REQUEST, f"{name}: must not be negative (got {value})")
    if most is not None and value > most:
        raise web.HttpError(HTTPStatus.BAD_REQUEST, f"{name}: must be at most {most} (got {raw})")
    return value


def _list(request: flask.Request) -> flask.Response:
    jobs, _ = _started()
    status = request.args.get("status") or None
    if status is not None and status not in JOB_STATUSES:
        raise web.HttpError(
            HTTPStatus.BAD_REQUEST, f"status: must be one of {', '.join(JOB_STATUSES)}"
        )
    date = request.args.get("date") or None
    try:
        day = parse_local_date(date) if date else None
    except ValueError as exc:
        raise web.HttpError(HTTPStatus.BAD_REQUEST, f"date: {exc}") from None
    try:
        device_id = parse_device_id(request.args.get("device_id"))
    except ValueError as exc:
        raise web.HttpError(HTTPStatus.BAD_REQUEST, f"device_id: {exc}") from None
    limit, offset = _int(request, "limit"), _int(request, "offset", most=MAX_LIST_OFFSET)
    page, total = jobs.list_jobs(
        status=JobStatus(status) if status else None,
        date=day,
        device_id=device_id,
        limit=limit,
        offset=offset,
    )
    applied = min(limit or 50, 500)
    body = JobPage(
        jobs=[job_view(j) for j in page], total_count=total, limit=applied, offset=offset
    )
    return web.model_response(body)


def _job(job_id: str) -> flask.Response:
    jobs, objects = _started()
    job = _existing(jobs, _job_id(job_id))
    return web.model_response(job_view(job, objects))


def _report(job_id: str) -> flask.Response:
    from shared.report import render

    jobs, objects = _started()
    job = _existing(jobs, _job_id(job_id))
    if job.status != JobStatus.COMPLETED:
        raise web.HttpError(
            HTTPStatus.CONFLICT,
            (
                f"job {job.id} failed: it has no report ({job.error_message})"
                if job.status == JobStatus.FAILED
                else f"job {job.id} is {job.status.value}: its report exists once it has completed"
            ),
            job_status=job.status.value,
        )
    if job.csv_key is None or job.summary_key is None:  # (a completed job always has both)
        raise web.HttpError(HTTPStatus.GONE, f"job {job.id} has no stored results")
    keys = ResultKeys(csv_key=job.csv_key, summary_key=job.summary_key)
    try:
        series = json.loads(objects.read(keys.series_key))
    except ObjectMissing:
        raise web.HttpError(
            HTTPStatus.GONE,
            f"job {job.id}: its report's data is no longer stored (objects expire; "
            "submit the request again for a fresh result)",
        ) from None
    page = render(job_view(job).model_dump(mode="json"), series)
    return flask.Response(page, headers={"Content-Type": "text/html; charset=utf-8"})


def _resolve(jobs: JobStore, name: str) -> Job:
    """A job by id, or by its CSV's basename (what old clients link to)."""
    if name.endswith(".csv"):
        short = short_id_of(name)
        job = jobs.by_csv_name(name) if short else None
        if job is None:
            raise web.HttpError(HTTPStatus.NOT_FOUND, f"no CSV named {name}")
        return job
    return _existing(jobs, _job_id(name))


def _download(name: str, summary: bool = False) -> flask.Response:
    jobs, objects = _started()
    job = _resolve(jobs, name)
    key = job.summary_key if summary else job.csv_key
    if job.status != JobStatus.COMPLETED or key is None:
        raise web.HttpError(
            HTTPStatus.CONFLICT,
            f"job {job.id} is {job.status.value}: its files exist once it has completed",
            job_status=job.status.value,
        )
    link = objects.presign(key)
    return flask.Response(status=HTTPStatus.FOUND, headers={"Location": link.url})


def _dead_letter(request: flask.Request) -> flask.Response:
    event = events.parse(web.request_headers(request), request.get_data())
    attributes = event.get_attributes()
    log.error(
        "event dead-lettered by the broker",
        extra={
            "event_type": attributes.get("type"),
            "event_id": attributes.get("id"),
            "event_source": attributes.get("source"),
            "subject": attributes.get("subject"),
            "error_code": attributes.get("knativeerrorcode"),
            "error_destination": attributes.get("knativeerrordest"),
        },
    )
    # Empty: a broker treats a non-empty reply that is not a CloudEvent as a failure.
    return flask.Response(status=HTTPStatus.ACCEPTED)


def _serve(request: flask.Request) -> flask.Response:
    _started()  # logging, telemetry and clients of this process (no connection yet)
    if (answer := web.health(request, _ready)) is not None:
        return answer
    if request.path.endswith("/") and not request.path.endswith("//") and request.path != "/":
        # One address per resource: the report page's relative links resolve against it.
        # The redirect is relative too, so it works behind a proxy that adds a prefix (with
        # more slashes, clients resolve "../" differently: those are not redirected).
        last = quote(request.path[:-1].rsplit("/", 1)[-1], safe="")  # re-encoded: decoded
        query = f"?{request.query_string.decode()}" if request.query_string else ""
        return flask.Response(
            status=HTTPStatus.PERMANENT_REDIRECT, headers={"Location": f"../{last}{query}"}
        )
    try:
        endpoint, arguments = ROUTES.bind("", "/").match(request.path, method=request.method)
    except NotFound:
        raise web.HttpError(HTTPStatus.NOT_FOUND, f"no such resource: {request.path}") from None
    except MethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.valid_methods or []))
        raise web.method_not_allowed(request, allowed) from None
    with telemetry.span(f"status {endpoint}", parent=web.request_headers(request)):
        if endpoint == "list":
            return _list(request)
        if endpoint == "job":
            return _job(arguments["job_id"])
        if endpoint == "report":
            return _report(arguments["job_id"])
        if endpoint == "download":
            return _download(arguments["name"])
        if endpoint == "download_summary":
            return _download(arguments["name"], summary=True)
        return _dead_letter(request)


@functions_framework.http
def status(request: flask.Request) -> flask.Response:
    """Entry point (FUNCTION_TARGET=status)."""
    return _handle(request)


# Dead-lettered events come back whole, with their data: more room than submit needs.
_handle = web.guarded(
    _serve, transient=(DatabaseUnavailable, StorageUnavailable), max_body=1024 * 1024
)
