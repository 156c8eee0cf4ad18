"""Input a hostile caller sends: NUL characters and invalid UTF-8, through the whole stack.

Each is the caller's error, answered 400 / INVALID_ARGUMENT naming the field: never a 500
or INTERNAL, which a broker retries and a client reads as the server's fault.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import grpc
import pytest
import urllib3

from shared import events
from shared.rpc.distance.v1 import distance_pb2 as pb
from tests.stack import Stack, dead_letter_tries, post, request_event

CALCULATE = "/distance.v1.DistanceService/CalculateDistanceFromHome"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"date": "2024-03-14", "idempotency_key": "k\0ey"}, "idempotency_key"),
        ({"date": "2024-03-14", "timezone": "UTC\0"}, "timezone"),
        ({"date": "2024-03-14", "device_id": "phone\0"}, "device_id"),
    ],
)
def test_a_nul_in_request_data_is_refused_naming_the_field(
    stack: Stack, data: dict[str, str], field: str
) -> None:
    reply = urllib3.request("POST", stack.url("submit"), json=data, retries=False)
    assert reply.status == 400
    assert json.loads(reply.data)["error"].startswith(f"{field}:"), reply.data
    headers, body = request_event(data)
    reply = post(stack.url("submit"), headers, body)
    assert reply.status == 400
    assert json.loads(reply.data)["error"].startswith(f"{field}:"), reply.data


@pytest.mark.parametrize("attribute", ["id", "source", "subject"])
def test_a_nul_in_an_event_attribute_is_refused_naming_it(stack: Stack, attribute: str) -> None:
    event = {
        "specversion": "1.0",
        "type": events.DISTANCE_REQUESTED,
        "source": "/tests/hostile",
        "id": str(uuid.uuid4()),
        "data": {"date": "2024-03-14"},
    }
    event[attribute] = "x\0y"
    headers = {"Content-Type": "application/cloudevents+json"}
    reply = post(stack.url("submit"), headers, json.dumps(event).encode())
    assert reply.status == 400
    assert json.loads(reply.data)["error"] == f"{attribute}: must not contain a NUL character"


def test_a_nul_in_the_idempotency_key_header_is_refused(stack: Stack) -> None:
    reply = urllib3.request(
        "POST",
        stack.url("submit"),
        json={"date": "2024-03-14"},
        headers={"Idempotency-Key": "a\0b"},
        retries=False,
    )
    assert reply.status == 400  # the HTTP server refuses the header before submit sees it


def test_a_nul_event_through_the_broker_is_dead_lettered_at_once(stack: Stack) -> None:
    data = {"date": "2024-03-14", "idempotency_key": "\0"}
    tries = dead_letter_tries(stack, data, str(uuid.uuid4()))
    assert tries == [(400, "final")]


@pytest.fixture
def channel(stack: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.url("ingress")) as channel:
        yield channel


def test_invalid_utf8_over_grpc_is_invalid_argument(channel: grpc.Channel) -> None:
    raw = channel.unary_unary(CALCULATE)  # bytes in, bytes out: no client-side checks
    # Field 1 (date), a string of two bytes that are not UTF-8.
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\x0a\x02\xff\xfe", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in (info.value.details() or "")


def test_a_nul_over_grpc_is_invalid_argument_naming_the_field(channel: grpc.Channel) -> None:
    call = channel.unary_unary(
        CALCULATE,
        request_serializer=pb.CalculateDistanceRequest.SerializeToString,
        response_deserializer=pb.CalculateDistanceResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as info:
        call(pb.CalculateDistanceRequest(date="2024-03-14", idempotency_key="a\0b"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith("idempotency_key:")
