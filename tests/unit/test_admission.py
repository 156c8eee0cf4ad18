"""Admission's token buckets: a burst, then a rate, per requester; gRPC peers keyed by
address."""

from __future__ import annotations

import pytest

from shared.admission import RateLimiter, TooManyRequests, grpc_peer_address


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate_per_requester() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=6, burst=2, clock=clock)
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(TooManyRequests) as refused:
        limiter.take("a")
    assert refused.value.retry_after == 10  # one token every 10 s
    assert "at most 2 at once and 6 a minute; retry in 10 s" in str(refused.value)
    limiter.take("b")  # another requester has its own bucket
    clock.now += 9.9
    with pytest.raises(TooManyRequests):
        limiter.take("a")
    clock.now += 0.2
    limiter.take("a")
    clock.now += 3600  # a long pause refills to the burst, never beyond
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(TooManyRequests):
        limiter.take("a")


def test_grpc_peers_are_keyed_by_address_without_port() -> None:
    assert grpc_peer_address("ipv4:10.1.2.3:51234") == "10.1.2.3"
    assert grpc_peer_address("ipv6:[::1]:5000") == "::1"
    assert grpc_peer_address("unix:/tmp/s") == "unix:/tmp/s"
