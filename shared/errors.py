"""The root of the errors otel-worker raises on purpose, and the one kind that is transient.

Every error class of `shared` derives from `OtelWorkerError` (the engine, which imports
nothing of `shared`, raises plain `ValueError` for bad input), so a caller can tell our
failures from a library's. Where an error also is a `ValueError`, `LookupError` or
`RuntimeError` it keeps that base too, so existing handlers still catch it.

`DependencyUnavailable` is a dependency that cannot be reached now (the database, the
object store): the request was fine and a retry may succeed, so the HTTP functions answer
503 and the broker redelivers (`web.guarded`), the gRPC ingress UNAVAILABLE.
"""

from __future__ import annotations


class OtelWorkerError(Exception):
    """Base of every error otel-worker raises on purpose."""


class DependencyUnavailable(OtelWorkerError):
    """A dependency (database, object store) is unreachable now: retry later."""
