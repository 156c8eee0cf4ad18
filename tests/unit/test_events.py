"""CloudEvents: contracts validate with messages naming the field; both HTTP modes round-trip;
publishing retries what is transient and reports what is not."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import events
from shared.contracts import DayRequested, DistanceRequested, JobQueued
from shared.dev.stack import REPO_ROOT, free_ports
from tests.conftest import RecordingServer

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def sink() -> Iterator[RecordingServer]:
    server = RecordingServer().start()
    yield server
    server.stop()


def _request_event(data: dict[str, object]) -> events.CloudEvent:
    return events.CloudEvent(
        {"type": events.DISTANCE_REQUESTED, "source": "/tests", "id": "r-1"}, data
    )


@pytest.mark.parametrize("mode", [events.binary, events.structured])
def test_events_round_trip_in_both_http_modes(mode: object) -> None:
    job_id = uuid.uuid4()
    event = events.new_event(
        events.JOB_QUEUED,
        JobQueued(job_id=job_id),
        source="/otel-worker/submit",
        subject=str(job_id),
        traceparent=TRACEPARENT,
    )
    headers, body = mode(event)  # type: ignore[operator]
    assert events.is_cloudevent(headers)
    parsed = events.parse(headers, body)
    assert parsed["type"] == events.JOB_QUEUED
    assert parsed["subject"] == str(job_id)
    assert parsed["traceparent"] == TRACEPARENT
    assert events.data_as(parsed, JobQueued).job_id == job_id


def test_binary_mode_also_sends_the_w3c_traceparent_header() -> None:
    event = events.new_event(
        events.JOB_QUEUED, JobQueued(job_id=uuid.uuid4()), source="/s", traceparent=TRACEPARENT
    )
    headers, _ = events.binary(event)
    assert headers["traceparent"] == TRACEPARENT
    assert headers["ce-traceparent"] == TRACEPARENT


def test_plain_json_is_not_taken_for_a_cloudevent() -> None:
    assert not events.is_cloudevent({"Content-Type": "application/json"})
    with pytest.raises(events.EventError, match="not a valid CloudEvent"):
        events.parse({"content-type": "application/json"}, b'{"date": "2026-01-01"}')


BINARY = {
    "ce-specversion": "1.0",
    "ce-type": events.DISTANCE_REQUESTED,
    "ce-source": "/t",
    "ce-id": "1",
    "content-type": "application/json",
}


@pytest.mark.parametrize("missing", ["ce-id", "ce-source", "ce-type"])
def test_a_binary_event_without_a_required_header_is_refused_naming_it(missing: str) -> None:
    headers = {k: v for k, v in BINARY.items() if k != missing}
    with pytest.raises(events.EventError, match=f"^{missing}: required header is missing$"):
        events.parse(headers, b"{}")


@pytest.mark.parametrize("empty", ["ce-id", "ce-source", "ce-type"])
def test_a_binary_event_with_an_empty_required_header_is_refused_naming_it(empty: str) -> None:
    with pytest.raises(events.EventError, match=f"^{empty}: must not be empty$"):
        events.parse({**BINARY, empty: ""}, b"{}")


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"id": 7}, "id: must be a string (got 7)"),
        ({"source": ["/t"]}, "source: must be a string"),
        ({"id": ""}, "id: must not be empty"),
        ({"source": ""}, "source: must not be empty"),
        ({"traceparent": 5}, "traceparent: must be a string (got 5)"),
    ],
)
def test_a_structured_event_with_a_bad_attribute_is_refused_naming_it(
    attributes: dict[str, object], message: str
) -> None:
    event = {"specversion": "1.0", "type": events.DISTANCE_REQUESTED, "source": "/t", "id": "1"}
    body = json.dumps({**event, **attributes, "data": {"date": "2024-03-01"}}).encode()
    headers = {"content-type": "application/cloudevents+json"}
    with pytest.raises(events.EventError, match=f"^{re.escape(message)}"):
        events.parse(headers, body)


def test_a_request_with_every_field_validates() -> None:
    data = {
        "date": "2026-03-07",
        "end_date": "2026-03-09",
        "device_id": "stuart.phone-2",
        "timezone": "Europe/Berlin",
        "idempotency_key": "abc",
    }
    request = events.data_as(_request_event(data), DistanceRequested)
    assert request.date == dt.date(2026, 3, 7)
    assert request.days == 3
    assert request.device_id == "stuart.phone-2"


@pytest.mark.parametrize("timezone", ["UTC", "Europe/Berlin", "America/Argentina/Salta"])
def test_iana_time_zones_and_the_first_day_served_are_accepted(timezone: str) -> None:
    data = {"date": "1970-01-01", "timezone": timezone}
    request = events.data_as(_request_event(data), DistanceRequested)
    assert (request.date, request.timezone) == (dt.date(1970, 1, 1), timezone)


def test_an_empty_device_means_all_devices() -> None:
    request = events.data_as(
        _request_event({"date": "2026-03-07", "device_id": ""}), DistanceRequested
    )
    assert request.device_id is None
    assert request.days == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "date: Field required"),
        ({"date": "2026-02-30"}, "date: 2026-02-30 is not a calendar date"),
        ({"date": "03/07/2026"}, "date: must be a date written YYYY-MM-DD"),
        ({"date": 20260307}, "date: must be a date written YYYY-MM-DD"),
        ({"date": "2026-03-07", "end_date": "2026-03-01"}, "^end_date: 2026-03-01 is before date"),
        ({"date": "2026-03-07", "device_id": "a b"}, "device_id: must be 1-100 characters"),
        ({"date": "2026-03-07", "device_id": "x" * 101}, "device_id: must be 1-100 characters"),
        ({"date": "2026-03-07", "device_id": "../etc"}, "device_id: must be 1-100 characters"),
        ({"date": "2026-03-07", "timezone": "Moon/Base"}, "timezone: unknown time zone"),
        ({"date": "0001-01-01"}, "date: 0001-01-01 is before 1970-01-01"),
        ({"date": "1969-12-31"}, "date: 1969-12-31 is before 1970-01-01"),
        ({"date": "2026-03-07", "end_date": "0001-01-01"}, "end_date: 0001-01-01 is before"),
        ({"date": "2026-03-07", "timezone": "localtime"}, "timezone: unknown time zone"),
        ({"date": "2026-03-07", "timezone": "posixrules"}, "timezone: unknown time zone"),
        ({"date": "2026-03-07", "timezone": "Factory"}, "timezone: unknown time zone"),
        ({"date": "2026-03-07", "timezone": "posix/Europe/Berlin"}, "timezone: unknown time"),
        ({"date": "2026-03-07", "timezone": "right/UTC"}, "timezone: unknown time zone"),
        ({"date": "2026-03-07", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"date": "2026-03-07", "idempotency_key": ""}, "idempotency_key: String should have"),
    ],
)
def test_bad_requests_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(events.EventError, match=message):
        events.data_as(_request_event(data), DistanceRequested)


@pytest.mark.parametrize("data", [b"not json", b"[1, 2]", b""])
def test_data_that_is_not_a_json_object_is_refused(data: bytes) -> None:
    with pytest.raises(events.EventError, match="data: must be a JSON object"):
        events.data_as(events.parse(BINARY, data), DistanceRequested)


def test_publisher_retries_transient_failures(sink: RecordingServer) -> None:
    sink.script = [(503, {}, b""), (429, {}, b"")]
    publisher = events.Publisher(sink.url, attempts=3, backoff=0.01)
    event = events.new_event(events.JOB_QUEUED, JobQueued(job_id=uuid.uuid4()), source="/s")
    publisher.publish(event)
    assert len(sink.received) == 3
    assert sink.received[-1]["headers"]["ce-id"] == event["id"]
    assert json.loads(sink.received[-1]["body"])["job_id"] == event.get_data()["job_id"]


def test_publisher_gives_up_after_its_attempts(sink: RecordingServer) -> None:
    sink.default = (500, {}, b"broken")
    publisher = events.Publisher(sink.url, attempts=2, backoff=0.01)
    event = events.new_event(events.JOB_QUEUED, JobQueued(job_id=uuid.uuid4()), source="/s")
    with pytest.raises(events.PublishError, match=r"job.queued.v1 .* failed: HTTP 500"):
        publisher.publish(event)
    assert len(sink.received) == 2


def test_publisher_does_not_retry_a_rejected_event(sink: RecordingServer) -> None:
    sink.default = (400, {}, b"bad event")
    publisher = events.Publisher(sink.url, attempts=5, backoff=0.01)
    event = events.new_event(events.JOB_QUEUED, JobQueued(job_id=uuid.uuid4()), source="/s")
    with pytest.raises(events.PublishError, match="HTTP 400"):
        publisher.publish(event)
    assert len(sink.received) == 1


def test_unreachable_broker_fails_fast_and_clearly() -> None:
    (port,) = free_ports(1)
    publisher = events.Publisher(f"http://127.0.0.1:{port}/", attempts=3, backoff=0.01, timeout=1)
    event = events.new_event(events.JOB_QUEUED, JobQueued(job_id=uuid.uuid4()), source="/s")
    started = time.monotonic()
    with pytest.raises(events.PublishError, match=f"127.0.0.1:{port}"):
        publisher.publish(event)
    assert time.monotonic() - started < 5


def test_committed_event_schemas_are_current(tmp_path: Path) -> None:
    fresh = events.export_schemas(tmp_path)
    committed = REPO_ROOT / "docs" / "events"
    assert {p.name for p in fresh} == {p.name for p in committed.glob("*.schema.json")}
    for path in fresh:
        assert (committed / path.name).read_text() == path.read_text(), "run `make schemas`"


def test_the_request_schema_tells_callers_the_date_format() -> None:
    schema = DistanceRequested.model_json_schema()
    assert schema["required"] == ["date"]
    assert schema["properties"]["date"]["format"] == "date"
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize(
    ("last_day", "accepted"),
    [
        (None, True),
        ("2024-03-12", True),
        ("2024-03-18", True),
        ("2024-03-19", False),
        ("2024-03-11", False),
    ],
)
def test_a_day_request_asks_for_at_most_a_week_of_one_device(
    last_day: str | None, accepted: bool
) -> None:
    data = {"job_id": str(uuid.uuid4()), "device_id": "phone1", "day": "2024-03-12"}
    event = events.new_event(
        events.DAY_REQUESTED,
        DayRequested.model_validate(data),
        source="/tests",
    )
    event.data = {**data, "last_day": last_day}
    if accepted:
        assert events.data_as(event, DayRequested).last_day == (
            None if last_day is None else dt.date.fromisoformat(last_day)
        )
    else:
        with pytest.raises(events.EventError, match="last_day must be day or one of the 6 days"):
            events.data_as(event, DayRequested)
