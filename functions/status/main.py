"""status: jobs by id, job listings, reports, presigned downloads, the dead-letter sink.

GET /jobs/{id} (with `?wait=SECONDS`: once it has finished, or after that long), GET
/jobs/{id}/report (an HTML page; its map's script and style from GET /assets/{name},
cached for good: their links carry a digest of their bytes), GET
/jobs?status=&date=&device_id=&limit=&offset= (newest first, with the count of every
match), GET /download/{job_id} (302 to a fresh presigned CSV URL; also by
the CSV's basename, so old relative links keep working, /download/{job_id}/summary and
/download/{job_id}/gpx),
POST /dead-letters (events the broker gave up on), /healthz and /readyz.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from urllib.parse import quote

import flask
import functions_framework
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

from shared import clients, config, events, queries, telemetry, web
from shared.http_function import HttpFunction
from shared.job_view import job_view
from shared.jobs import JobStore
from shared.storage import ObjectStore
from shared.waiting import JobWaits, TooManyWaits

FUNCTION = "status"
log = logging.getLogger(FUNCTION)

ROUTES = Map(
    [
        Rule("/jobs", endpoint="list", methods=["GET"]),
        Rule("/jobs/<job_id>", endpoint="job", methods=["GET"]),
        Rule("/jobs/<job_id>/report", endpoint="report", methods=["GET"]),
        Rule("/download/<name>", endpoint="download", methods=["GET"]),
        Rule("/download/<name>/summary", endpoint="download_summary", methods=["GET"]),
        Rule("/download/<name>/gpx", endpoint="download_gpx", methods=["GET"]),
        Rule("/assets/<name>", endpoint="asset", methods=["GET"]),
        Rule("/dead-letters", endpoint="dead_letter", methods=["POST"]),
    ],
    strict_slashes=False,
)


def _clients() -> tuple[JobStore, ObjectStore, JobWaits]:
    return clients.jobs(), clients.objects(), clients.job_waits()


# Ready once its clients are built, whatever the database's state: status is also the
# broker's dead-letter sink, which needs no database, and a status out of rotation would
# leave callers waiting on Knative's activator instead of a prompt 503.
_function = HttpFunction(
    FUNCTION,
    (
        config.DatabaseSettings,
        config.StorageSettings,
        config.JobSettings,
        config.WaitSettings,
        config.ReportSettings,
    ),
    _clients,
    probe_database=False,
)


def _list(request: flask.Request) -> flask.Response:
    jobs, _, _ = _function.service()
    return web.model_response(queries.list_page(jobs, queries.parse_list_query(request.args)))


def _job(request: flask.Request, job_id: str) -> flask.Response:
    jobs, objects, waits = _function.service()
    seconds = queries.parse_wait(request.args)
    found = web.parse_job_id(job_id)
    try:
        job = waits.wait(found, seconds, lambda: queries.existing(jobs, found))
    except TooManyWaits as exc:
        raise web.HttpError(
            HTTPStatus.TOO_MANY_REQUESTS,
            str(exc),
            headers={"Retry-After": str(exc.retry_after)},
            retry_after=exc.retry_after,
        ) from None
    return web.model_response(job_view(job, objects))


def _report(job_id: str) -> flask.Response:
    from shared.report import render

    jobs, objects, _ = _function.service()
    job = queries.existing(jobs, web.parse_job_id(job_id))
    series = queries.report_series(job, objects)
    page = render(job_view(job).model_dump(mode="json"), series, config.load(config.ReportSettings))
    return flask.Response(page, headers={"Content-Type": "text/html; charset=utf-8"})


def _asset(request: flask.Request, name: str) -> flask.Response:
    from shared import report

    body = report.asset(name)
    if body is None:
        raise web.HttpError(HTTPStatus.NOT_FOUND, f"no such resource: {request.path}")
    etag = f'"{report.asset_version(name)}"'
    headers = {
        "Content-Type": "text/css; charset=utf-8"
        if name.endswith(".css")
        else "text/javascript; charset=utf-8",
        # The page links each file by a digest of its bytes: a new build, a new link.
        "Cache-Control": "public, max-age=31536000, immutable",
        "ETag": etag,
    }
    if request.headers.get("If-None-Match") == etag:
        return flask.Response(status=HTTPStatus.NOT_MODIFIED, headers=headers)
    return flask.Response(body, headers=headers)


def _download(name: str, summary: bool = False, gpx: bool = False) -> flask.Response:
    jobs, objects, _ = _function.service()
    key = queries.download_key(queries.resolve(jobs, name), summary=summary, gpx=gpx)
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
    if (answer := _function.health(request)) is not None:
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
            return _job(request, arguments["job_id"])
        if endpoint == "report":
            return _report(arguments["job_id"])
        if endpoint == "asset":
            return _asset(request, arguments["name"])
        if endpoint == "download":
            return _download(arguments["name"])
        if endpoint == "download_summary":
            return _download(arguments["name"], summary=True)
        if endpoint == "download_gpx":
            return _download(arguments["name"], gpx=True)
        return _dead_letter(request)


@functions_framework.http
def status(request: flask.Request) -> flask.Response:
    """Entry point (FUNCTION_TARGET=status)."""
    return _handle(request)


# Dead-lettered events come back whole, with their data: more room than submit needs.
_handle = web.guarded(_serve, max_body=1024 * 1024)
