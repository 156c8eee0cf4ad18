"""CloudEvents: type names, building and parsing over HTTP, and publishing to the broker.

Types are reverse-DNS with a version suffix; `subject` is the job id where there is one.
Every event carries the W3C `traceparent` (the CloudEvents distributed-tracing extension)
so one trace follows a job through the broker hop.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import urllib3
from cloudevents.conversion import to_binary, to_structured
from cloudevents.exceptions import GenericException as CloudEventsError
from cloudevents.http import CloudEvent, from_http
from pydantic import BaseModel, ValidationError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from shared import contracts
from shared.errors import OtelWorkerError

log = logging.getLogger(__name__)

PREFIX = "dev.otelworker"
DISTANCE_REQUESTED = f"{PREFIX}.distance.requested.v1"
JOB_ACCEPTED = f"{PREFIX}.job.accepted.v1"
JOB_QUEUED = f"{PREFIX}.job.queued.v1"
JOB_COMPLETED = f"{PREFIX}.job.completed.v1"
JOB_FAILED = f"{PREFIX}.job.failed.v1"
JOB_CANCELLED = f"{PREFIX}.job.cancelled.v1"
DAY_REQUESTED = f"{PREFIX}.day.requested.v1"
JOB_SUPERSEDED = f"{PREFIX}.job.superseded.v1"
DAY_SUMMARIZED = f"{PREFIX}.day.summarized.v1"
EMITTED = (
    JOB_ACCEPTED,
    JOB_QUEUED,
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_CANCELLED,
    DAY_REQUESTED,
    JOB_SUPERSEDED,
    DAY_SUMMARIZED,
)
"""Every type this system emits (`distance.requested` comes from callers)."""

OUTBOUND = (JOB_ACCEPTED, JOB_COMPLETED, JOB_FAILED, JOB_CANCELLED, JOB_SUPERSEDED, DAY_SUMMARIZED)
"""Emitted for requesters, consumed by no Trigger of ours: other cluster apps subscribe to
them with Triggers of their own, matching `data.job.requester` to their request."""

DATA_MODELS: dict[str, type[BaseModel]] = {
    DISTANCE_REQUESTED: contracts.DistanceRequested,
    JOB_ACCEPTED: contracts.JobAccepted,
    JOB_QUEUED: contracts.JobQueued,
    JOB_COMPLETED: contracts.JobOutcome,
    JOB_FAILED: contracts.JobOutcome,
    JOB_CANCELLED: contracts.JobOutcome,
    DAY_REQUESTED: contracts.DayRequested,
    JOB_SUPERSEDED: contracts.JobSuperseded,
    DAY_SUMMARIZED: contracts.DaySummarized,
}
"""The pydantic model of each event type's data."""

M = TypeVar("M", bound=BaseModel)


class EventError(OtelWorkerError, ValueError):
    """A request that is not a usable CloudEvent: a poison message (HTTP 400, no retry)."""


class PublishError(OtelWorkerError, RuntimeError):
    """The broker did not take an event after the bounded retries."""


class _Retryable(OtelWorkerError):
    pass


def export_schemas(folder: Path) -> list[Path]:
    """Write the JSON Schema of every event type's data to `folder`; return the files."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for type_, model in DATA_MODELS.items():
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{type_}.schema.json",
            "title": f"data of {type_}",
            **model.model_json_schema(mode="serialization"),
        }
        path = folder / f"{type_}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


def is_cloudevent(headers: Mapping[str, str]) -> bool:
    """True when the HTTP request carries a CloudEvent (binary or structured mode)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    content_type = lowered.get("content-type", "")
    return "ce-specversion" in lowered or content_type.startswith("application/cloudevents")


_REQUIRED: Final = ("id", "source", "type")
"""Required attributes besides `specversion` (which the SDK checks), all non-empty strings."""
_OPTIONAL_STRINGS: Final = ("subject", "traceparent")
"""Optional attributes the functions read, as strings."""


def parse(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """Parse a CloudEvent from HTTP (binary or structured mode); EventError if malformed.

    The message names a missing or invalid attribute by its header in binary mode
    (`ce-id`) and by its name in structured mode (`id`).
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    binary_mode = "ce-specversion" in lowered
    if binary_mode:
        # The SDK would report any missing header as a missing specversion.
        for name in _REQUIRED:
            if f"ce-{name}" not in lowered:
                raise EventError(f"ce-{name}: required header is missing")
    try:
        event = from_http(dict(headers), body)
    except (CloudEventsError, ValueError, TypeError) as exc:
        raise EventError(f"not a valid CloudEvent: {exc}") from None
    prefix = "ce-" if binary_mode else ""
    for name in (*_REQUIRED, *_OPTIONAL_STRINGS):
        value = event.get(name)
        if value is None and name in _OPTIONAL_STRINGS:
            continue
        if not isinstance(value, str):
            raise EventError(f"{prefix}{name}: must be a string (got {value!r})")
        if not value and name in _REQUIRED:
            raise EventError(f"{prefix}{name}: must not be empty")
    for name, value in event.get_attributes().items():
        # Stored with the job (source, id) or logged: PostgreSQL's text cannot hold a NUL.
        if isinstance(value, str) and "\0" in value:
            raise EventError(f"{prefix}{name}: must not contain a NUL character")
    return event


def data_as(event: CloudEvent, model: type[M]) -> M:
    """Validate the event's data against `model`; EventError names the bad fields."""
    data = event.get_data()
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data or b"null")
        except ValueError:
            raise EventError("data: must be a JSON object") from None
    if not isinstance(data, dict):
        raise EventError("data: must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise EventError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """One line naming each invalid field and why (the message callers see)."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "data"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


def new_event(
    type_: str,
    data: BaseModel,
    *,
    source: str,
    subject: str | None = None,
    traceparent: str | None = None,
    event_id: str | None = None,
) -> CloudEvent:
    """A CloudEvent of `type_` whose data is the model's JSON; a fresh id unless given."""
    attributes: dict[str, Any] = {
        "type": type_,
        "source": source,
        "id": event_id or str(uuid.uuid4()),
        "datacontenttype": "application/json",
    }
    if subject is not None:
        attributes["subject"] = subject
    if traceparent:
        attributes["traceparent"] = traceparent
    return CloudEvent(attributes, data.model_dump(mode="json"))


def binary(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Headers and body of the event in binary mode (plus the plain W3C traceparent)."""
    headers, body = to_binary(event)
    traceparent = event.get("traceparent")
    if traceparent:
        headers["traceparent"] = traceparent
    return headers, body if isinstance(body, bytes) else body.encode()


def structured(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Headers and body of the event in structured mode."""
    headers, body = to_structured(event)
    return headers, body if isinstance(body, bytes) else body.encode()


@dataclass
class Publisher:
    """Posts events to the broker ingress (`K_SINK`) with bounded retries and backoff.

    Retries connection errors, 429 and 5xx; any other non-2xx is final. The HTTP pool is
    created on first use, never at import (functions-framework forks after import).
    """

    sink: str
    attempts: int = 3
    timeout: float = 5.0
    backoff: float = 0.2
    _http: urllib3.PoolManager | None = None

    def publish(self, event: CloudEvent) -> None:
        """Deliver `event`; raise PublishError when the broker does not accept it."""
        headers, body = binary(event)
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential(multiplier=self.backoff, max=5),
                retry=retry_if_exception_type(_Retryable),
                reraise=True,
            ):
                with attempt:
                    self._post(headers, body)
        except (_Retryable, PublishError) as exc:
            raise PublishError(
                f"publishing {event['type']} ({event['id']}) to {self.sink} failed: {exc}"
            ) from None
        log.info(
            "published event",
            extra={
                "event_type": event["type"],
                "event_id": event["id"],
                "subject": event.get("subject"),
            },
        )

    def _post(self, headers: dict[str, str], body: bytes) -> None:
        if self._http is None:
            self._http = urllib3.PoolManager(num_pools=2, maxsize=4)
        try:
            response = self._http.request(
                "POST",
                self.sink,
                body=body,
                headers=headers,
                timeout=urllib3.Timeout(total=self.timeout),
                retries=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise _Retryable(str(exc)) from None
        if 200 <= response.status < 300:
            return
        if response.status == 429 or response.status >= 500:
            raise _Retryable(f"HTTP {response.status}")
        raise PublishError(f"HTTP {response.status}: {response.data[:200]!r}")
