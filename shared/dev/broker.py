"""A small stand-in for the Knative broker, for development and tests (never production).

It reads the Broker and Triggers from `knative/`, accepts CloudEvents on its ingress
(POST, binary or structured mode), fans each event out to the Triggers whose filter
matches, and applies Knative's delivery rules strictly so it cannot hide a bug the real
broker would expose:

- 2xx is success; a 2xx reply with a CloudEvent body is a reply event and goes back into
  the broker; a non-empty 2xx body that is not a CloudEvent is a failed delivery;
- 404, 409, 429, 5xx, timeouts and connection errors are retried with the delivery's
  backoff; 400 and other 4xx are final;
- an event that cannot be delivered goes to the dead-letter sink with the
  `knativeerrordest`, `knativeerrorcode` and `knativeerrordata` extensions.

`time_scale` multiplies the backoff delays, so tests need not wait real minutes.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import urllib3
from cloudevents.http import CloudEvent

from shared import events
from shared.dev.manifests import Broker, DeliverySpec, Destination, Trigger, backoff_seconds

log = logging.getLogger(__name__)

RETRYABLE = frozenset({404, 408, 409, 429})
"""4xx codes Knative retries (with every 5xx); any other 4xx is final."""

Resolver = Callable[[Destination], str]


@dataclass(frozen=True)
class Delivery:
    """The effective delivery settings of one Trigger (its own, else the Broker's)."""

    retry: int = 0
    backoff_policy: str = "exponential"
    backoff_delay: float = 0.2
    timeout: float = 60.0
    dead_letter_sink: Destination | None = None

    @classmethod
    def merged(cls, *specs: DeliverySpec | None) -> Delivery:
        """Field by field, the first spec that sets a value wins."""
        values: dict[str, Any] = {}
        for spec in specs:
            if spec is None:
                continue
            for name in ("retry", "backoff_policy", "dead_letter_sink"):
                if values.get(name) is None and getattr(spec, name) is not None:
                    values[name] = getattr(spec, name)
            for name in ("backoff_delay", "timeout"):
                delta = getattr(spec, name)
                if values.get(name) is None and delta is not None:
                    values[name] = delta.total_seconds()
        return cls(**{k: v for k, v in values.items() if v is not None})

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before retry `retry_number` (1-based), as Knative computes it."""
        return backoff_seconds(self.backoff_policy, self.backoff_delay, retry_number - 1)


@dataclass(frozen=True)
class Hop:
    """One delivery attempt, kept for logs and tests."""

    trigger: str
    event_type: str
    event_id: str
    event_source: str
    subject: str | None
    attempt: int
    status: int | None
    outcome: str


@dataclass
class DevBroker:
    """The broker: an ingress HTTP server plus a pool of delivery workers."""

    brokers: list[Broker]
    triggers: list[Trigger]
    resolve: Resolver
    time_scale: float = 1.0
    workers: int = 32
    hops: list[Hop] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _pool: ThreadPoolExecutor | None = None
    _http: urllib3.PoolManager = field(
        default_factory=lambda: urllib3.PoolManager(maxsize=16, retries=False)
    )
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The broker ingress URL (what K_SINK points at)."""
        assert self._server is not None, "broker not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self, port: int = 0) -> DevBroker:
        """Listen on 127.0.0.1:`port` (0 = any free port) in a background thread."""
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="delivery")
        broker = self

        class Ingress(BaseHTTPRequestHandler):
            # Keep-alive, as a real broker ingress: a new connection per event costs more
            # than the event.
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                status = broker.ingest(dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("ingress: " + format, *args)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Ingress)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="broker", daemon=True
        ).start()
        log.info("dev broker listening", extra={"url": self.url, "triggers": len(self.triggers)})
        return self

    def stop(self) -> None:
        """Stop accepting events and abandon pending retries."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.clear()

    def ingest(self, headers: dict[str, str], body: bytes) -> int:
        """Accept an event from a producer: 202, or 400 when it is not a CloudEvent."""
        try:
            event = events.parse(headers, body)
        except events.EventError as exc:
            log.warning("broker refused a request", extra={"error": str(exc)})
            return HTTPStatus.BAD_REQUEST
        self._fan_out(event)
        return HTTPStatus.ACCEPTED

    def _fan_out(self, event: CloudEvent) -> None:
        attributes = event.get_attributes()
        matched = [t for t in self.triggers if t.matches(dict(attributes))]
        log.info(
            "broker received event",
            extra={
                "event_type": event["type"],
                "event_id": event["id"],
                "triggers": [t.metadata.name for t in matched],
            },
        )
        if self._pool is None or self._stopping.is_set():
            return
        for trigger in matched:
            self._pool.submit(self._deliver, trigger, event)

    def _delivery_of(self, trigger: Trigger) -> Delivery:
        broker = next(b for b in self.brokers if b.metadata.name == trigger.spec.broker)
        return Delivery.merged(trigger.spec.delivery, broker.spec.delivery)

    def _deliver(self, trigger: Trigger, event: CloudEvent) -> None:
        delivery = self._delivery_of(trigger)
        target = self.resolve(trigger.spec.subscriber)
        headers, body = events.binary(event)
        headers["Prefer"] = "reply"
        status: int | None = None
        data = b""
        for attempt in range(1, delivery.retry + 2):
            status, data, outcome = self._attempt(target, headers, body, delivery.timeout)
            self._record(trigger, event, attempt, status, outcome)
            if outcome == "delivered":
                return
            if outcome == "final" or attempt > delivery.retry:
                break
            if self._stopping.wait(delivery.delay(attempt) * self.time_scale):
                return
        self._dead_letter(trigger, event, delivery, target, status, data)

    def _attempt(
        self, target: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> tuple[int | None, bytes, str]:
        try:
            response = self._http.request(
                "POST", target, body=body, headers=headers, timeout=timeout
            )
        except urllib3.exceptions.HTTPError as exc:
            return None, str(exc).encode(), "retry"
        status, data = response.status, response.data
        if 200 <= status < 300:
            if not data:
                return status, data, "delivered"
            reply_headers = dict(response.headers.items())
            if not events.is_cloudevent(reply_headers):
                return status, data, "retry"  # a 2xx that is neither empty nor an event
            try:
                reply = events.parse(reply_headers, data)
            except events.EventError:
                return status, data, "retry"
            self._fan_out(reply)
            return status, data, "delivered"
        if status in RETRYABLE or status >= 500:
            return status, data, "retry"
        return status, data, "final"

    def _record(
        self, trigger: Trigger, event: CloudEvent, attempt: int, status: int | None, outcome: str
    ) -> None:
        """Keep and log one hop (attempt 0 is the hand-over to the dead-letter sink)."""
        hop = Hop(
            trigger.metadata.name,
            event["type"],
            event["id"],
            event["source"],
            event.get("subject"),
            attempt,
            status,
            outcome,
        )
        with self._lock:
            self.hops.append(hop)
        if attempt:
            log.info("delivery attempt", extra=dataclasses.asdict(hop))
        else:
            log.error("delivery failed for good", extra=dataclasses.asdict(hop))

    def _dead_letter(
        self,
        trigger: Trigger,
        event: CloudEvent,
        delivery: Delivery,
        target: str,
        status: int | None,
        data: bytes,
    ) -> None:
        if delivery.dead_letter_sink is None:
            log.error(
                "event dropped: undeliverable and no dead-letter sink",
                extra={"trigger": trigger.metadata.name, "event_id": event["id"]},
            )
            return
        extensions = {
            "knativeerrordest": target,
            "knativeerrorcode": str(status if status is not None else 0),
            "knativeerrordata": base64.b64encode(data[:1024]).decode(),
        }
        attributes = {**event.get_attributes(), **extensions}
        dead = CloudEvent(attributes, event.get_data())
        headers, body = events.binary(dead)
        sink = self.resolve(delivery.dead_letter_sink)
        outcome = "dead-lettered"
        try:
            response = self._http.request("POST", sink, body=body, headers=headers, timeout=30)
            if not 200 <= response.status < 300:
                outcome = f"dead-letter sink answered {response.status}"
        except urllib3.exceptions.HTTPError as exc:
            outcome = f"dead-letter sink unreachable: {exc}"
        self._record(trigger, event, 0, status, outcome)


def service_resolver(services: Mapping[str, str | Sequence[str]]) -> Resolver:
    """Resolve Knative Service references to local base URLs (`{"compute": "http://..."}`),
    keeping a relative `uri` as the path; absolute URIs are used as they are. A Service
    with several URLs (several local workers, as pods behind one Service) gets each
    delivery at the next one in turn."""
    turns = {
        name: itertools.cycle(urls) for name, urls in services.items() if not isinstance(urls, str)
    }
    lock = threading.Lock()

    def base_of(name: str) -> str:
        urls = services[name]
        if isinstance(urls, str):
            return urls
        with lock:
            return next(turns[name])

    def resolve(destination: Destination) -> str:
        if destination.ref is None:
            if not destination.uri:
                raise ValueError("a destination needs a ref or a uri")
            return destination.uri
        try:
            base = base_of(destination.ref.name)
        except KeyError:
            raise ValueError(
                f"no local address for {destination.ref.kind} {destination.ref.name}"
            ) from None
        return base.rstrip("/") + "/" + (destination.uri or "").lstrip("/")

    return resolve
