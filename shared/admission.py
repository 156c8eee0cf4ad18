"""Admission: how much a caller may ask of the service, and how fast.

Two bounds keep a loop of big requests from pinning compute: a cap on pending work
(`MAX_PENDING_JOBS`, counted in device-days, checked by submit against the jobs table) and
a per-requester rate (a token bucket per caller, in each process that admits requests).
Both are answered "too many requests" (HTTP 429, gRPC RESOURCE_EXHAUSTED) with a hint of
when to retry.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from shared.errors import OtelWorkerError

MAX_TRACKED: Final = 10_000
"""Requesters whose buckets are kept; the least recently seen is forgotten first (a full
bucket, which is what a forgotten one comes back as)."""


class TooManyRequests(OtelWorkerError):
    """Refused for now; `retry_after` seconds is when trying again makes sense."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimiter:
    """Token buckets by requester: `burst` requests at once, refilled at `per_minute`."""

    def __init__(
        self,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, requester: str) -> None:
        """Spend one token of `requester`'s bucket, or raise `TooManyRequests` naming the
        rate and when the next token comes."""
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.pop(requester, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            if tokens >= 1.0:
                self._buckets[requester] = (tokens - 1.0, now)
                while len(self._buckets) > MAX_TRACKED:
                    self._buckets.popitem(last=False)
                return
            self._buckets[requester] = (tokens, now)
        wait = math.ceil((1.0 - tokens) / self.rate) if self.rate > 0 else 60
        raise TooManyRequests(
            f"too many requests from {requester}: at most {self.burst} at once and "
            f"{self.rate * 60:g} a minute; retry in {wait} s",
            retry_after=wait,
        )


def first_forwarded(header: str | None) -> str | None:
    """The client address an `X-Forwarded-For` header names first (the original caller, as
    Knative's gateway and our ingress pass it on), or None."""
    if not header:
        return None
    first = header.split(",", 1)[0].strip()
    return first or None


def grpc_peer_address(peer: str) -> str:
    """The address of a gRPC peer string (`ipv4:10.0.0.7:51234`, `ipv6:[::1]:5000`), without
    its port: one caller's connections share a bucket."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer
