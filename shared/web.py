"""HTTP plumbing shared by the functions: JSON errors, CloudEvent replies, status codes.

Functions answer the broker by its rules: 2xx only after the work is committed, 400 for
a poison event (not retried), 409 while another attempt holds the job, 5xx for
transient failures. Every error body is JSON naming what was wrong.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Final

import flask
from cloudevents.http import CloudEvent
from pydantic import BaseModel
from werkzeug.exceptions import RequestEntityTooLarge

from shared import events, telemetry
from shared.errors import DependencyUnavailable, OtelWorkerError

log = logging.getLogger(__name__)


class HttpError(OtelWorkerError):
    """An error with the HTTP status it should be answered with."""

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, **details: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.details = details


def json_response(body: Any, status: int = HTTPStatus.OK, **headers: str) -> flask.Response:
    """`body` as JSON with `status`."""
    response = flask.jsonify(body)
    response.status_code = status
    response.headers.update(headers)
    return response


def model_response(body: BaseModel, status: int = HTTPStatus.OK) -> flask.Response:
    """`body` serialised by pydantic (in Rust: several times cheaper than `json_response`
    of its `model_dump`, which a status poll pays on every read)."""
    return flask.Response(body.model_dump_json(), status=status, mimetype="application/json")


def error_response(status: int, message: str, **details: Any) -> flask.Response:
    """A JSON error: {"error": message, "status": status, ...details}."""
    return json_response({"error": message, "status": status, **details}, status)


def event_response(event: CloudEvent, status: int = HTTPStatus.OK) -> flask.Response:
    """A binary-mode CloudEvent as the HTTP reply (the broker publishes it)."""
    headers, body = events.binary(event)
    return flask.Response(body, status=status, headers=headers)


def request_headers(request: flask.Request) -> dict[str, str]:
    """The request's headers as a plain dict."""
    return dict(request.headers.items())


SMALL_BODY: Final = 64 * 1024
"""The largest body submit and compute take: their requests and events are a few hundred
bytes."""


def guarded(
    handler: Callable[[flask.Request], flask.Response],
    transient: tuple[type[Exception], ...] = (DependencyUnavailable,),
    *,
    max_body: int,
    poison: tuple[type[Exception], ...] = (),
) -> Callable[[flask.Request], flask.Response]:
    """Wrap a handler so failures become JSON errors with the right status.

    The body is read before the handler runs, at most `max_body` bytes (with or without
    a Content-Length): a larger one is answered 413 and read no further. `HttpError`
    keeps its status; `EventError` and the `poison` types (data the database refuses to
    store, such as `psycopg.DataError`) are a poison event (400: a retry cannot succeed, so
    the broker dead-letters it rather than retrying); the `transient` types (by default
    `DependencyUnavailable`: the database or object store down) are 503 so callers and the
    broker retry; anything
    else is logged with its traceback and answered 500.
    """

    def run(request: flask.Request) -> flask.Response:
        try:
            # One byte over the limit tells a body at the limit from a longer one, which
            # werkzeug cuts short at the limit when it comes without a Content-Length.
            request.max_content_length = max_body + 1
            if len(request.get_data()) > max_body:  # cached: what the handler reads
                raise RequestEntityTooLarge()
            return handler(request)
        except RequestEntityTooLarge:
            # functions-framework reads the whole body after every response (and would
            # hit the limit again): leave it nothing to read. The server drops the rest.
            request.stream = io.BytesIO()
            log.warning(
                "refused a request body over the limit",
                extra={"limit": max_body, "content_length": request.content_length},
            )
            return error_response(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body: larger than the {max_body} bytes accepted here",
            )
        except HttpError as exc:
            response = error_response(exc.status, exc.message, **exc.details)
            response.headers.update(exc.headers)
            return response
        except events.EventError as exc:
            log.warning("refused a bad event", extra={"error": str(exc)})
            return error_response(HTTPStatus.BAD_REQUEST, str(exc))
        except poison as exc:
            log.warning("refused data the database cannot store", extra={"error": str(exc)})
            return error_response(
                HTTPStatus.BAD_REQUEST, f"the request holds data that cannot be stored: {exc}"
            )
        except transient as exc:
            log.warning("dependency unavailable", extra={"error": str(exc)})
            return error_response(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
        except Exception:
            log.exception("unexpected failure")
            return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


SERVING: Final = "SERVING"
NOT_SERVING: Final = "NOT_SERVING"
"""What the health endpoints say, as gRPC health checking does: nothing more."""


def health(request: flask.Request, ready: Callable[[], None]) -> flask.Response | None:
    """Answer `/healthz` (the process serves) and `/readyz` (`ready()` does not raise: its
    dependencies answer), each with SERVING or NOT_SERVING and nothing else, and `/metrics`
    (404 unless METRICS_PROMETHEUS is on); None otherwise."""
    if request.path == "/metrics":
        if not telemetry.prometheus_enabled():
            return error_response(
                HTTPStatus.NOT_FOUND, "metrics are not served: set METRICS_PROMETHEUS=true"
            )
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return flask.Response(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
    if request.path == "/healthz":
        return json_response({"status": SERVING})
    if request.path == "/readyz":
        try:
            ready()
        except Exception as exc:
            # Why goes to the log only: a probe's answer names no dependency, host or port.
            log.warning("not ready", extra={"error": str(exc)})
            return json_response({"status": NOT_SERVING}, HTTPStatus.SERVICE_UNAVAILABLE)
        return json_response({"status": SERVING})
    return None


def method_not_allowed(request: flask.Request, allowed: str) -> HttpError:
    """The error for a request with a method this path does not serve."""
    return HttpError(
        HTTPStatus.METHOD_NOT_ALLOWED,
        f"{request.method} is not served here; use {allowed}",
        headers={"Allow": allowed},
    )


def parse_job_id(text: str) -> uuid.UUID:
    """`text` (from a URL path) as a job id; 400 when it is not a UUID."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"job_id: {text!r} is not a UUID") from None
