"""The root of the errors otel-worker raises on purpose, and the one kind that is transient.

Every error class of `shared` derives from `OtelWorkerError` (the engine, which imports
nothing of `shared`, raises plain `ValueError` for bad input), so a caller can tell our
failures from a library's. Where an error also is a `ValueError`, `LookupError` or
`RuntimeError` it keeps that base too, so existing handlers still catch it.

`DependencyUnavailable` is a dependency that cannot be reached now (the database, the
object store): the request was fine and a retry may succeed, so the HTTP functions answer
503 and the broker redelivers (`web.guarded`), the gRPC ingress UNAVAILABLE.

`one_line` shapes an error's text for a caller: a job's `error_message`, a gRPC status
message quoting an upstream.
"""

from __future__ import annotations


class OtelWorkerError(Exception):
    """Base of every error otel-worker raises on purpose."""


class DependencyUnavailable(OtelWorkerError):
    """A dependency (database, object store) is unreachable now: retry later."""


def one_line(text: str, limit: int) -> str:
    """`text` as one line of at most `limit` characters (an ellipsis marks a cut): what a
    caller is shown is a line, never a page."""
    line = " ".join(text.split())
    return line if len(line) <= limit else f"{line[: limit - 1]}…"
