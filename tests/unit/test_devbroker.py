"""The dev broker obeys Knative's delivery rules, with real HTTP subscribers on loopback."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from pydantic import BaseModel

from shared import events
from shared.dev.broker import Delivery, DevBroker, service_resolver
from shared.dev.manifests import Broker, DeliverySpec, Trigger, load_eventing, retry_window
from shared.dev.stack import wait_until
from tests.conftest import RecordingServer, Reply

Servers = dict[str, RecordingServer]


class Payload(BaseModel):
    n: int


def _trigger(name: str, event_type: str, service: str, **delivery: Any) -> Trigger:
    spec: dict[str, Any] = {
        "broker": "b",
        "filter": {"attributes": {"type": event_type}},
        "subscriber": {
            "ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": service}
        },
    }
    if delivery:
        spec["delivery"] = delivery
    return Trigger.model_validate(
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


BROKER = Broker.model_validate(
    {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": "b"},
        "spec": {
            "delivery": {
                "retry": 2,
                "backoffPolicy": "exponential",
                "backoffDelay": "PT1S",
                "deadLetterSink": {
                    "ref": {
                        "apiVersion": "serving.knative.dev/v1",
                        "kind": "Service",
                        "name": "dls",
                    },
                    "uri": "/dead-letters",
                },
            }
        },
    }
)


@pytest.fixture
def subscribers() -> Iterator[Servers]:
    started = {name: RecordingServer().start() for name in ("a", "b", "dls")}
    yield started
    for subscriber in started.values():
        subscriber.stop()


def _broker(subscribers: Servers, *triggers: Trigger) -> DevBroker:
    resolve = service_resolver({name: s.url for name, s in subscribers.items()})
    return DevBroker([BROKER], list(triggers), resolve, time_scale=0.001).start()


def _send(broker: DevBroker, event_type: str, n: int = 1) -> tuple[int, str]:
    event = events.new_event(event_type, Payload(n=n), source="/tests", subject=f"s{n}")
    headers, body = events.structured(event)
    status = urllib3.request("POST", broker.url, body=body, headers=headers).status
    return status, event["id"]


def _reply_event(event_type: str) -> Reply:
    headers, body = events.binary(events.new_event(event_type, Payload(n=99), source="/sub"))
    return 200, headers, body


def test_events_go_only_to_triggers_whose_filter_matches(
    subscribers: Servers,
) -> None:
    broker = _broker(subscribers, _trigger("ta", "t.a", "a"), _trigger("tb", "t.b", "b"))
    try:
        assert _send(broker, "t.a", 1)[0] == 202
        assert _send(broker, "t.a", 2)[0] == 202
        assert _send(broker, "t.other", 3)[0] == 202
        wait_until(lambda: len(subscribers["a"].received) == 2, 5, "deliveries")
    finally:
        broker.stop()
    assert subscribers["b"].received == []
    first = subscribers["a"].received[0]["headers"]
    assert first["ce-type"] == "t.a"
    assert first["prefer"] == "reply"


def test_retries_on_5xx_404_409_429_then_succeeds(subscribers: Servers) -> None:
    subscribers["a"].script = [(503, {}, b""), (409, {}, b""), (404, {}, b""), (429, {}, b"")]
    broker = _broker(subscribers, _trigger("ta", "t.a", "a", retry=4))
    try:
        _, event_id = _send(broker, "t.a")
        wait_until(lambda: any(h.outcome == "delivered" for h in broker.hops), 5, "delivery")
    finally:
        broker.stop()
    statuses = [h.status for h in broker.hops if h.event_id == event_id]
    assert statuses == [503, 409, 404, 429, 202]
    assert subscribers["dls"].received == []


def test_400_is_final_and_goes_to_the_dead_letter_sink(
    subscribers: Servers,
) -> None:
    subscribers["a"].script = [
        (400, {"content-type": "application/json"}, b'{"error":"date: bad"}')
    ]
    broker = _broker(subscribers, _trigger("ta", "t.a", "a", retry=5))
    try:
        _, event_id = _send(broker, "t.a")
        wait_until(lambda: len(subscribers["dls"].received) == 1, 5, "dead letter")
    finally:
        broker.stop()
    assert len(subscribers["a"].received) == 1
    dead = subscribers["dls"].received[0]
    assert dead["path"] == "/dead-letters"
    assert dead["headers"]["ce-id"] == event_id
    assert dead["headers"]["ce-knativeerrorcode"] == "400"
    assert dead["headers"]["ce-knativeerrordest"] == subscribers["a"].url + "/"
    assert base64.b64decode(dead["headers"]["ce-knativeerrordata"]) == b'{"error":"date: bad"}'
    assert json.loads(dead["body"]) == {"n": 1}


def test_exhausted_retries_go_to_the_dead_letter_sink(
    subscribers: Servers,
) -> None:
    subscribers["a"].default = (500, {}, b"down")
    broker = _broker(subscribers, _trigger("ta", "t.a", "a"))  # the broker's retry: 2
    try:
        _send(broker, "t.a")
        wait_until(lambda: len(subscribers["dls"].received) == 1, 10, "dead letter")
    finally:
        broker.stop()
    assert len(subscribers["a"].received) == 3
    assert subscribers["dls"].received[0]["headers"]["ce-knativeerrorcode"] == "500"


@pytest.mark.parametrize("status", [200, 202])
def test_a_2xx_body_that_is_not_a_cloudevent_is_a_failed_delivery(
    subscribers: Servers, status: int
) -> None:
    subscribers["a"].default = (status, {"content-type": "application/json"}, b'{"job_id": "x"}')
    broker = _broker(subscribers, _trigger("ta", "t.a", "a", retry=1))
    try:
        _send(broker, "t.a")
        wait_until(lambda: len(subscribers["dls"].received) == 1, 5, "dead letter")
    finally:
        broker.stop()
    assert len(subscribers["a"].received) == 2
    assert [h.outcome for h in broker.hops[:2]] == ["retry", "retry"]


def test_reply_events_are_published_back_into_the_broker(
    subscribers: Servers,
) -> None:
    subscribers["a"].script = [_reply_event("t.b")]
    broker = _broker(subscribers, _trigger("ta", "t.a", "a"), _trigger("tb", "t.b", "b"))
    try:
        _send(broker, "t.a")
        wait_until(lambda: len(subscribers["b"].received) == 1, 5, "reply delivery")
    finally:
        broker.stop()
    reply = subscribers["b"].received[0]
    assert reply["headers"]["ce-type"] == "t.b"
    assert reply["headers"]["ce-source"] == "/sub"


def test_ingress_refuses_what_is_not_a_cloudevent(subscribers: Servers) -> None:
    broker = _broker(subscribers, _trigger("ta", "t.a", "a"))
    try:
        response = urllib3.request(
            "POST",
            broker.url,
            body=b'{"date": "2026-01-01"}',
            headers={"content-type": "application/json"},
        )
    finally:
        broker.stop()
    assert response.status == 400
    assert subscribers["a"].received == []


def test_unreachable_subscriber_is_retried_then_dead_lettered(
    subscribers: Servers,
) -> None:
    resolve = service_resolver({"a": "http://127.0.0.1:9", "dls": subscribers["dls"].url})
    broker = DevBroker(
        [BROKER], [_trigger("ta", "t.a", "a", retry=1)], resolve, time_scale=0.001
    ).start()
    try:
        _send(broker, "t.a")
        wait_until(lambda: len(subscribers["dls"].received) == 1, 10, "dead letter")
    finally:
        broker.stop()
    assert [h.status for h in broker.hops[:2]] == [None, None]
    assert subscribers["dls"].received[0]["headers"]["ce-knativeerrorcode"] == "0"


def test_delivery_merging_and_backoff_follow_knative() -> None:
    trigger = DeliverySpec.model_validate({"retry": 6, "backoffDelay": "PT5S", "timeout": "PT150S"})
    merged = Delivery.merged(trigger, BROKER.spec.delivery)
    assert (merged.retry, merged.backoff_delay, merged.timeout) == (6, 5.0, 150.0)
    assert merged.dead_letter_sink is not None
    # Eventing waits delay * 2**n before retry n, counting from 0: the first retry after 5 s.
    assert [merged.delay(n) for n in (1, 2, 3, 6)] == [5.0, 10.0, 20.0, 160.0]
    assert retry_window(trigger) == 5 + 10 + 20 + 40 + 80 + 160
    linear = Delivery.merged(
        DeliverySpec.model_validate({"backoffPolicy": "linear", "backoffDelay": "PT2S"})
    )
    assert [linear.delay(n) for n in (1, 2, 3)] == [2.0, 4.0, 6.0]


def test_the_deployed_triggers_route_our_event_types() -> None:
    brokers, triggers = load_eventing()
    assert [b.metadata.name for b in brokers] == ["otel-worker"]
    routes = {
        t.spec.filter.attributes["type"]: t.spec.subscriber.ref.name
        for t in triggers
        if t.spec.subscriber.ref
    }
    assert routes == {
        events.DISTANCE_REQUESTED: "submit",
        events.JOB_QUEUED: "compute",
        events.DAY_REQUESTED: "compute",
    }
    for trigger in triggers:
        assert trigger.spec.broker == "otel-worker"
        assert trigger.spec.delivery is not None
        assert trigger.spec.delivery.dead_letter_sink is not None


def test_a_misspelt_manifest_field_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: x}\n"
        "spec: {broker: b, filter: {attributes: {type: t}}, subscriber: {uri: http://x},\n"
        "       delivry: {}}\n"
    )
    with pytest.raises(ValueError, match="delivry"):
        load_eventing(tmp_path)
