"""The gRPC face of the system: `distance.v1.DistanceService` adapted to submit and status.

The ingress owns no job logic and no database: a `CalculateDistanceFromHome` becomes a
`distance.requested` CloudEvent posted to submit, whose reply (a `job.accepted` event)
carries the job; `GetJobStatus` and `ListJobs` read status's JSON. Validation happens
there, once; the ingress turns each HTTP answer into the matching gRPC status code and
passes the caller's deadline on to the HTTP call.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hmac
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from http import HTTPStatus
from typing import Any, NoReturn, Protocol, TypeVar
from urllib.parse import quote, urlencode

import grpc
import urllib3
from cloudevents.http import CloudEvent
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2
from pydantic import BaseModel, ValidationError

from shared import events, telemetry
from shared.admission import first_forwarded, grpc_peer_address
from shared.config import UpstreamSettings
from shared.contracts import JobAccepted, JobPage, JobView
from shared.errors import OtelWorkerError, one_line
from shared.rpc.distance.v1 import distance_pb2 as pb
from shared.rpc.distance.v1 import distance_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["DistanceService"].full_name
M = TypeVar("M", bound=BaseModel)

_NO_DEADLINE_S = 86400.0
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_QUOTE_LIMIT = 200
_CODES: dict[int, grpc.StatusCode] = {
    HTTPStatus.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    HTTPStatus.CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    HTTPStatus.SERVICE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    HTTPStatus.BAD_GATEWAY: grpc.StatusCode.UNAVAILABLE,
    HTTPStatus.GATEWAY_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    HTTPStatus.TOO_MANY_REQUESTS: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class UpstreamError(OtelWorkerError):
    """submit or status answered with an error, or could not be reached; `retry_after` is
    the seconds an answer of "too many requests" asked the caller to wait."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


class Deadline(Protocol):
    """What the servicer needs of a gRPC context."""

    def time_remaining(self) -> float | None: ...


class Upstream:
    """HTTP client of submit and status, with bounded timeouts and no retries of its own
    (the gRPC caller decides whether to retry)."""

    def __init__(
        self, settings: UpstreamSettings, source: str = "/otel-worker/ingress", pool_size: int = 16
    ) -> None:
        self.settings = settings
        self.source = source
        self._http = urllib3.PoolManager(maxsize=pool_size, block=False, retries=False)
        self.reachable: dict[str, bool] = {"submit": True, "status": True}
        self.on_change: Callable[[bool], None] | None = None
        """Told `serving` each time it changes (the health service sets it)."""
        self._reachable_lock = threading.Lock()

    @property
    def serving(self) -> bool:
        """True while submit and status were both reachable when last heard from."""
        return all(self.reachable.values())

    def _mark(self, service: str, reachable: bool) -> None:
        # Changed and told under one lock, so concurrent outcomes reach on_change in order.
        with self._reachable_lock:
            before = self.serving
            self.reachable[service] = reachable
            if self.serving != before and self.on_change is not None:
                self.on_change(self.serving)

    def _timeout(self, context: Deadline) -> float:
        """The caller's remaining deadline, or UPSTREAM_TIMEOUT_SECONDS when it set none: a
        caller willing to wait is not cut short while submit finishes what it committed."""
        remaining = context.time_remaining()
        # grpcio reports a call without a deadline as one centuries away.
        if remaining is None or remaining > _NO_DEADLINE_S:
            return self.settings.upstream_timeout_seconds
        if remaining <= 0:
            raise UpstreamError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        return remaining

    def _send(
        self,
        service: str,
        method: str,
        url: str,
        timeout: float,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        **options: Any,
    ) -> urllib3.BaseHTTPResponse:
        """One request to `service`; failing to get an answer raises `UpstreamError`."""
        started = time.monotonic()
        try:
            response = self._http.request(
                method, url, body=body, headers=dict(headers or {}), timeout=timeout, **options
            )
        except urllib3.exceptions.NewConnectionError as exc:
            # Checked first: urllib3 makes a refused connection a kind of timeout error.
            self._mark(service, False)
            raise UpstreamError(
                grpc.StatusCode.UNAVAILABLE, f"{service} is unreachable: {exc}"
            ) from None
        except urllib3.exceptions.TimeoutError:
            raise UpstreamError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{service} did not answer within {time.monotonic() - started:.1f} s",
            ) from None
        except urllib3.exceptions.HTTPError as exc:
            self._mark(service, False)
            raise UpstreamError(
                grpc.StatusCode.UNAVAILABLE, f"{service} is unreachable: {exc}"
            ) from None
        self._mark(service, _answered(response))
        return response

    def _call(
        self,
        service: str,
        method: str,
        url: str,
        context: Deadline,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        codes: Mapping[int, grpc.StatusCode] | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """`_send` within the caller's deadline; an error answer raises `UpstreamError` with
        the gRPC code of its HTTP status (`codes` overrides the usual mapping)."""
        response = self._send(service, method, url, self._timeout(context), body, headers)
        if response.status >= 400:
            raise UpstreamError(
                {**_CODES, **(codes or {})}.get(response.status, grpc.StatusCode.INTERNAL),
                _error_text(service, response),
                response.headers.get("Retry-After"),
            )
        return response

    def submit(
        self, data: dict[str, Any], context: Deadline, caller: str | None = None
    ) -> JobAccepted:
        """Post a `distance.requested` event to submit; the job from its reply. `caller`
        (the gRPC caller's address) goes along as X-Forwarded-For: submit's per-requester
        rate is then per caller, not one for everything the ingress sends."""
        event = CloudEvent(
            {
                "type": events.DISTANCE_REQUESTED,
                "source": self.source,
                "id": str(uuid.uuid4()),
                "datacontenttype": "application/json",
                **({"traceparent": tp} if (tp := telemetry.traceparent()) else {}),
            },
            data,
        )
        headers, body = events.binary(event)
        if caller:
            headers["X-Forwarded-For"] = caller
        response = self._call(
            "submit", "POST", str(self.settings.submit_url), context, body, headers
        )
        try:
            reply = events.parse(dict(response.headers.items()), response.data)
        except events.EventError:
            # Not quoted: the parser's message carries the body (a proxy's HTML page, say).
            raise UpstreamError(
                grpc.StatusCode.INTERNAL,
                f"submit replied badly: not a CloudEvent ({_described(response)})",
            ) from None
        try:
            if reply["type"] != events.JOB_ACCEPTED:
                raise events.EventError(f"unexpected reply type {reply['type']}")
            return events.data_as(reply, JobAccepted)
        except events.EventError as exc:
            raise UpstreamError(
                grpc.StatusCode.INTERNAL, f"submit replied badly: {_excerpt(str(exc))}"
            ) from None

    def job(self, job_id: str, context: Deadline, wait_seconds: float = 0.0) -> JobView:
        """One job from status; with `wait_seconds`, once it has finished or after that
        long, cut so that status answers within the caller's deadline."""
        url = f"{_base(self.settings.status_url)}/jobs/{quote(job_id, safe='')}"
        if wait_seconds > 0:
            timeout = self._timeout(context)
            # Room for status to answer after its wait ends: a quarter, at most a second.
            wait = min(wait_seconds, timeout - min(1.0, timeout / 4))
            url += f"?wait={max(wait, 0.0):.3f}"
        return _model(JobView, self._call("status", "GET", url, context, headers=_trace()))

    def cancel(self, job_id: str, context: Deadline) -> JobView:
        """Cancel one job through submit (DELETE /jobs/{id}); a finished job (409) is
        FAILED_PRECONDITION."""
        url = f"{_base(self.settings.submit_url)}/jobs/{quote(job_id, safe='')}"
        response = self._call(
            "submit",
            "DELETE",
            url,
            context,
            headers=_trace(),
            codes={HTTPStatus.CONFLICT: grpc.StatusCode.FAILED_PRECONDITION},
        )
        return _model(JobView, response)

    def jobs(self, query: dict[str, str | int], context: Deadline) -> JobPage:
        """A page of jobs from status."""
        url = f"{_base(self.settings.status_url)}/jobs?{urlencode(query)}"
        return _model(JobPage, self._call("status", "GET", url, context, headers=_trace()))

    def download(self, name: str, traceparent: str | None) -> urllib3.BaseHTTPResponse:
        """status's answer to `GET /download/{name}` as it is: its 302 not followed, its
        error answers not raised (the HTTP relay passes them on)."""
        url = f"{_base(self.settings.status_url)}/download/{quote(name, safe='')}"
        headers = {"traceparent": traceparent} if traceparent else {}
        return self._send(
            "status",
            "GET",
            url,
            self.settings.upstream_timeout_seconds,
            headers=headers,
            redirect=False,
        )

    def fetch(self, url: str) -> urllib3.BaseHTTPResponse:
        """A presigned object URL, streamed (read it, then `release_conn`)."""
        try:
            return self._http.request(
                "GET",
                url,
                redirect=False,
                preload_content=False,
                timeout=self.settings.upstream_timeout_seconds,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise UpstreamError(
                grpc.StatusCode.UNAVAILABLE, f"the object store is unreachable: {exc}"
            ) from None

    def probe(self) -> None:
        """Quick liveness probe of both functions (run by the health service)."""
        for service, url in (
            ("submit", f"{_base(self.settings.submit_url)}/healthz"),
            ("status", f"{_base(self.settings.status_url)}/healthz"),
        ):
            try:
                response = self._http.request("GET", url, timeout=2.0)
                self._mark(service, response.status == 200)
            except urllib3.exceptions.NewConnectionError:  # a kind of TimeoutError: first
                self._mark(service, False)
            except urllib3.exceptions.TimeoutError:
                # Slow is not down: Knative's activator holds a request while a service
                # scaled to zero starts, longer than this probe waits. Keep what we knew.
                pass
            except urllib3.exceptions.HTTPError:
                self._mark(service, False)


def _answered(response: urllib3.BaseHTTPResponse) -> bool:
    """Whether the function itself answered: any status below 500 (or 501), or a 5xx with
    its own JSON error (its database is down, say: reachable, as its /healthz says too, so
    calls and probes agree). A 5xx from anything else (Knative's activator with no pod,
    a proxy) is the function being unreachable."""
    if response.status < 500 or response.status == 501:
        return True
    return str(response.headers.get("content-type", "")).startswith("application/json")


def _base(url: object) -> str:
    return str(url).rstrip("/")


def _trace() -> dict[str, str]:
    traceparent = telemetry.traceparent()
    return {"traceparent": traceparent} if traceparent else {}


def _excerpt(text: str) -> str:
    """What is quoted from an upstream into a gRPC message: one line of _QUOTE_LIMIT."""
    return one_line(text, _QUOTE_LIMIT)


def _described(response: urllib3.BaseHTTPResponse) -> str:
    content_type = response.headers.get("content-type") or "no content type"
    return f"HTTP {response.status}, {_excerpt(content_type)}"


def _error_text(service: str, response: urllib3.BaseHTTPResponse) -> str:
    """The `error` of the functions' JSON error answers; any other body is not quoted."""
    try:
        return _excerpt(str(json.loads(response.data)["error"]))
    except (ValueError, KeyError, TypeError):
        return f"{service} answered {_described(response)}"


def _model(model: type[M], response: urllib3.BaseHTTPResponse) -> M:
    try:
        return model.model_validate_json(response.data)
    except ValidationError as exc:
        # describe() names fields and rules only; str(exc) would quote the body.
        raise UpstreamError(
            grpc.StatusCode.INTERNAL,
            f"status replied badly ({_described(response)}): {_excerpt(events.describe(exc))}",
        ) from None


def _timestamp(value: dt.datetime | None) -> Any:
    if value is None:
        return None
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _day(value: dt.date | None) -> str:
    return value.isoformat() if value else ""


_STAY_FIELDS = (
    "id",
    "device_id",
    "duration_s",
    "latitude",
    "longitude",
    "radius_m",
    "fixes",
    "place",
    "clipped_start",
    "clipped_end",
)
_PLACE_FIELDS = ("place", "kind", "latitude", "longitude", "visits", "total_s")


def metrics_message(summary: Mapping[str, Any]) -> pb.Metrics:
    """The proto `Metrics` of one summary (or one device's part of it)."""
    points = summary.get("points", {})
    completeness = summary.get("completeness") or {}
    place = summary.get("max_distance_at")
    return pb.Metrics(
        points_read=points.get("read", 0),
        points_used=points.get("used", 0),
        points_dropped=points.get("dropped", {}),
        points_accuracy_unknown=points.get("accuracy_unknown", 0),
        path_km=summary.get("path_km", 0.0),
        raw_path_km=summary.get("raw_path_km", 0.0),
        path_km_low=summary.get("path_km_low", 0.0),
        path_km_high=summary.get("path_km_high", 0.0),
        max_distance_km=summary.get("max_distance_km", 0.0),
        max_distance_at=pb.Place(
            time=_timestamp(_parse_time(place["time"])),
            latitude=place["latitude"],
            longitude=place["longitude"],
            device_id=place["device_id"],
        )
        if place
        else None,
        min_distance_km=summary.get("min_distance_km", 0.0),
        mean_distance_km=summary.get("mean_distance_km", 0.0),
        median_distance_km=summary.get("median_distance_km", 0.0),
        time_at_home_s=summary.get("time_at_home_s", 0.0),
        time_away_s=summary.get("time_away_s", 0.0),
        time_unknown_s=summary.get("time_unknown_s", 0.0),
        trips=[
            pb.Trip(
                id=trip["id"],
                device_id=trip["device_id"],
                start=_timestamp(_parse_time(trip["start"])),
                end=_timestamp(_parse_time(trip["end"])),
                duration_s=trip["duration_s"],
                max_distance_km=trip.get("max_distance_km") or 0.0,
                path_km=trip["path_km"],
                clipped_start=trip["clipped_start"],
                clipped_end=trip["clipped_end"],
            )
            for trip in summary.get("trips", [])
        ],
        stays=[
            pb.Stay(
                **{key: stay[key] for key in _STAY_FIELDS},
                start=_timestamp(_parse_time(stay["start"])),
                end=_timestamp(_parse_time(stay["end"])),
            )
            for stay in summary.get("stays", [])
        ],
        places=[
            pb.PlaceVisit(
                **{key: visit[key] for key in _PLACE_FIELDS},
                first_arrival=_timestamp(_parse_time(visit["first_arrival"])),
                last_departure=_timestamp(_parse_time(visit["last_departure"])),
            )
            for visit in summary.get("places", [])
        ],
        timeline=[
            pb.TimelineEntry(
                kind=entry["kind"],
                device_id=entry["device_id"],
                start=_timestamp(_parse_time(entry["start"])),
                end=_timestamp(_parse_time(entry["end"])),
                duration_s=entry["duration_s"],
                place=entry.get("place") or "",
                stay_id=entry.get("stay_id") or 0,
                path_km=entry.get("path_km") or 0.0,
                from_place=entry.get("from_place") or "",
                to_place=entry.get("to_place") or "",
            )
            for entry in summary.get("timeline", [])
        ],
        completeness=pb.Completeness(
            coverage=completeness.get("coverage", 0.0),
            largest_gap_s=completeness.get("largest_gap_s", 0.0),
            largest_gap_start=_timestamp(_parse_time(completeness.get("largest_gap_start"))),
            ingest_lag_median_s=completeness.get("ingest_lag_median_s") or 0.0,
            ingest_lag_max_s=completeness.get("ingest_lag_max_s") or 0.0,
        ),
    )


def _parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def result_message(job: JobView) -> pb.JobResult | None:
    """The proto `JobResult` of a completed job (None before it completes)."""
    if job.status != "completed" or job.result is None:
        return None
    summary = job.result
    points = summary.get("points", {})
    return pb.JobResult(
        csv_path=job.csv_key or "",
        total_distance_km=summary.get("path_km", 0.0),
        total_locations=points.get("read", 0),
        max_distance_km=summary.get("max_distance_km", 0.0),
        min_distance_km=summary.get("min_distance_km", 0.0),
        date=_day(job.date),
        device_id=job.device_id or "",
        processing_time_ms=job.processing_time_ms or 0,
        csv_url=job.csv.url if job.csv else "",
        csv_url_expires_at=_timestamp(job.csv.expires_at) if job.csv else None,
        summary_url=job.summary.url if job.summary else "",
        end_date=_day(job.end_date),
        timezone=job.timezone,
        metrics=metrics_message(summary),
        devices=[
            pb.DeviceMetrics(device_id=device, metrics=metrics_message(part))
            for device, part in sorted(summary.get("devices", {}).items())
        ],
        notes=summary.get("notes", []),
    )


def status_message(job: JobView) -> pb.GetJobStatusResponse:
    """The proto answer of `GetJobStatus`."""
    return pb.GetJobStatusResponse(
        job_id=str(job.job_id),
        status=job.status,
        queued_at=_timestamp(job.queued_at),
        started_at=_timestamp(job.started_at),
        completed_at=_timestamp(job.completed_at),
        error_message=job.error_message or "",
        result=result_message(job),
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        date=_day(job.date),
        end_date=_day(job.end_date),
        device_id=job.device_id or "",
        timezone=job.timezone,
        superseded_by=str(job.superseded_by) if job.superseded_by else "",
        supersedes=str(job.supersedes) if job.supersedes else "",
    )


def summary_message(job: JobView) -> pb.JobSummary:
    """One row of `ListJobs`."""
    return pb.JobSummary(
        job_id=str(job.job_id),
        status=job.status,
        date=_day(job.date),
        device_id=job.device_id or "",
        queued_at=_timestamp(job.queued_at),
        completed_at=_timestamp(job.completed_at),
        end_date=_day(job.end_date),
        attempts=job.attempts,
        error_message=job.error_message or "",
    )


@contextlib.contextmanager
def caller_trace(method: str, context: grpc.ServicerContext) -> Iterator[None]:
    """Continue the caller's trace (its `traceparent` metadata) for the call, so the events
    and requests it sends carry the caller's trace id and submit and compute log it. Where
    spans are exported the gRPC instrumentation has done so already; elsewhere a span of
    our own does it, exported or not."""
    incoming = {
        key: value
        for key, value in context.invocation_metadata() or ()
        if key == "traceparent" and isinstance(value, str)
    }
    if telemetry.in_span() or not incoming:
        yield
        return
    with telemetry.span(f"{SERVICE}/{method}", parent=incoming):
        yield


class DistanceService(distance_pb2_grpc.DistanceServiceServicer):
    """`distance.v1.DistanceService`, delegating to submit and status. At most `max_waits`
    GetJobStatus calls wait for a finish at once (each holds one of the server's threads):
    one more is RESOURCE_EXHAUSTED, so waits never take every thread."""

    def __init__(self, upstream: Upstream, max_waits: int = 8) -> None:
        self.upstream = upstream
        self.max_waits = max_waits
        self._waits = threading.BoundedSemaphore(max_waits)

    def CalculateDistanceFromHome(
        self, request: pb.CalculateDistanceRequest, context: grpc.ServicerContext
    ) -> pb.CalculateDistanceResponse:
        """Queue a job (or return the one an earlier call with the same key made)."""
        data: dict[str, Any] = {"date": request.date}
        for name in ("end_date", "device_id", "timezone", "idempotency_key"):
            if value := getattr(request, name):
                data[name] = value
        with _upstream_call("CalculateDistanceFromHome", context):
            accepted = self.upstream.submit(data, context, _caller(context))
        job = accepted.job
        return pb.CalculateDistanceResponse(
            job_id=str(job.job_id),
            status=job.status,
            queued_at=_timestamp(job.queued_at),
            created=accepted.created,
        )

    def GetJobStatus(
        self, request: pb.GetJobStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetJobStatusResponse:
        """The job's state, and its result once completed; with `wait_seconds`, once it has
        finished or the wait ran out."""
        _check_job_id(request.job_id, context)
        wait = request.wait_seconds
        if not math.isfinite(wait) or wait < 0:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"wait_seconds: must be a number of seconds, 0 or more (got {wait:g})",
            )
        if wait == 0:
            with _upstream_call("GetJobStatus", context):
                return status_message(self.upstream.job(request.job_id, context))
        if not self._waits.acquire(blocking=False):
            context.set_trailing_metadata((("retry-after", "1"),))
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"wait_seconds: {self.max_waits} calls are already waiting at this ingress, "
                "the most it allows; retry in 1 s, or ask without wait_seconds",
            )
        try:
            with _upstream_call("GetJobStatus", context):
                return status_message(self.upstream.job(request.job_id, context, wait))
        finally:
            self._waits.release()

    def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.ServicerContext
    ) -> pb.GetJobStatusResponse:
        """Cancel a queued or processing job; the job as it now stands."""
        _check_job_id(request.job_id, context)
        with _upstream_call("CancelJob", context):
            return status_message(self.upstream.cancel(request.job_id, context))

    def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.ServicerContext
    ) -> pb.ListJobsResponse:
        """Jobs matching the filters, newest first, with the count of all matches."""
        query: dict[str, str | int] = {"limit": request.limit, "offset": request.offset}
        for name in ("status", "date", "device_id"):
            if value := getattr(request, name):
                query[name] = value
        with _upstream_call("ListJobs", context):
            page = self.upstream.jobs(query, context)
        return pb.ListJobsResponse(
            jobs=[summary_message(job) for job in page.jobs],
            total_count=page.total_count,
            limit=page.limit,
            offset=page.offset,
        )


@contextlib.contextmanager
def _upstream_call(method: str, context: grpc.ServicerContext) -> Iterator[None]:
    """What every method does around its call to submit or status: continue the caller's
    trace, and abort with the gRPC status of an upstream error."""
    try:
        with caller_trace(method, context):
            yield
    except UpstreamError as exc:
        _abort(context, exc)


def _check_job_id(job_id: str, context: grpc.ServicerContext) -> None:
    if not job_id:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id: is required")
    # Checked here: in a URL path, "x/report" or "../jobs" would name another route.
    if not _UUID.fullmatch(job_id):
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"job_id: {_excerpt(repr(job_id))} is not a UUID"
        )


def _caller(context: grpc.ServicerContext) -> str:
    """Who calls: the first X-Forwarded-For address a gateway passed on, else the peer."""
    metadata = dict(context.invocation_metadata() or ())
    forwarded = first_forwarded(str(metadata.get("x-forwarded-for", "")))
    return forwarded or grpc_peer_address(context.peer())


def _abort(context: grpc.ServicerContext, exc: UpstreamError) -> NoReturn:
    log.info("call refused", extra={"code": exc.code.name, "error": exc.message})
    if exc.retry_after is not None:
        # The retry hint of a RESOURCE_EXHAUSTED, in seconds, as HTTP's Retry-After.
        context.set_trailing_metadata((("retry-after", exc.retry_after),))
    context.abort(exc.code, exc.message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


class DependencyHealth(health.HealthServicer):
    """Standard health checking. The overall service ("") is SERVING while this process
    serves (what Knative probes); `distance.v1.DistanceService` is NOT_SERVING while submit
    or status is unreachable, as last seen by a call or a probe, and watchers are told each
    change. Check and Watch answer at once with that state. A background thread probes the
    functions when a Check or a new Watch finds the state older than `interval` s; a
    function slower than the probe keeps its state. Nothing probes on a timer: an open
    Watch alone never keeps a function scaled to zero awake (it learns from calls and
    Checks)."""

    def __init__(self, upstream: Upstream, interval: float = 5.0) -> None:
        super().__init__()
        self.upstream = upstream
        self.interval = interval
        self._probed = -math.inf  # when the last probe began (monotonic)
        self._asked = False  # a Check or a new Watch found the state stale
        self._watches: set[Callable[[], None]] = set()  # how to end each open Watch
        self._closed = False
        self._wake = threading.Condition()
        self._prober: threading.Thread | None = None
        upstream.on_change = self._publish
        self._publish(upstream.serving)

    def _publish(self, serving: bool) -> None:
        self.set(
            SERVICE,
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING,
        )

    def _due_in(self) -> float | None:
        """Seconds until the next probe (0: now), or None while nobody asked for one."""
        if not self._asked:
            return None
        return max(0.0, self._probed + self.interval - time.monotonic())

    def _probe_when_due(self) -> None:
        while True:
            with self._wake:
                while not self._closed and (wait := self._due_in()) != 0:
                    self._wake.wait(wait)
                if self._closed:
                    return
                self._asked = False
                self._probed = time.monotonic()
            self.upstream.probe()  # outside the lock: up to 2 s per function

    def _nudge(self) -> None:
        """Wake the prober (started on first use), noting a stale state was asked about."""
        with self._wake:
            if time.monotonic() - self._probed >= self.interval:
                self._asked = True
            if self._prober is None:
                self._prober = threading.Thread(
                    target=self._probe_when_due, name="health-probe", daemon=True
                )
                self._prober.start()
            self._wake.notify()

    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext) -> Any:
        """Answer with the last known state at once; a stale one is refreshed in the
        background (a probe can take seconds, longer than a health check's deadline)."""
        if request.service == SERVICE:
            self._nudge()
        return super().Check(request, context)

    def Watch(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.ServicerContext,
        send_response_callback: Any = None,
    ) -> Any:
        """Stream the health state: the last known one at once, then every change."""
        stream = super().Watch(request, context, send_response_callback)
        end: Callable[[], None] = (
            functools.partial(send_response_callback, None) if stream is None else stream.close
        )

        def closed() -> None:
            with self._wake:
                self._watches.discard(end)

        with self._wake:
            self._watches.add(end)
        if not context.add_callback(closed):  # the call has already ended
            closed()
        if request.service == SERVICE:
            self._nudge()
        return stream

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING from now on (watchers are told); probing stops."""
        super().enter_graceful_shutdown()
        with self._wake:
            self._closed = True
            self._wake.notify()

    def end_watches(self) -> None:
        """End the open Watch streams (status OK): a shutting-down server waits for every
        call, and a Watch would otherwise hold it for the whole grace period."""
        with self._wake:
            ends = list(self._watches)
        for end in ends:
            end()


class BearerAuth(grpc.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every call but health checks (Kubernetes
    probes cannot send metadata). The scheme is matched in any case (RFC 7235), the token
    in constant time."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

        def deny(_request: object, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self._deny: grpc.RpcMethodHandler[object, None] = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(
        self,
        continuation: Any,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """Let the call through only with the right token."""
        if handler_call_details.method.startswith("/grpc.health.v1.Health/"):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        scheme, _, token = str(metadata.get("authorization", "")).partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), self._expected):
            return continuation(handler_call_details)
        return self._deny


class _Undecodable:
    """A request body that did not parse (a string field with invalid UTF-8, say)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class DecodeGuard(grpc.ServerInterceptor):
    """Answers a request that cannot be parsed INVALID_ARGUMENT (a caller's error), where
    grpcio would answer INTERNAL, which reads as the server's fault and invites retries."""

    def intercept_service(
        self,
        continuation: Any,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """The method's handler with a deserializer that reports, rather than raises."""
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        deserialize = handler.request_deserializer

        def parse(data: bytes) -> object:
            try:
                return deserialize(data)
            except DecodeError as exc:
                return _Undecodable(str(exc))

        def checked(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def run(request: object, context: grpc.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, f"request: {_excerpt(request.reason)}"
                    )
                return behaviour(request, context)

            return run

        if handler.unary_unary is not None:
            return handler._replace(
                request_deserializer=parse, unary_unary=checked(handler.unary_unary)
            )
        if handler.unary_stream is not None:
            return handler._replace(
                request_deserializer=parse, unary_stream=checked(handler.unary_stream)
            )
        return handler
