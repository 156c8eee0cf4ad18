"""JSON-lines logging on stdout, with request context (job id) and trace ids.

`setup_logging` is called once by each process entry point. Context such as the job id is
bound with `log_context`, so every line written inside it carries the fields without
passing them to each call.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from typing import Any

from pythonjsonlogger.json import JsonFormatter

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "otel_worker_log_context", default=None
)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add `fields` (e.g. job_id) to every log record emitted inside the block."""
    merged = {**(_context.get() or {}), **fields}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


class _ContextFilter(logging.Filter):
    """Copies the bound context and the current trace/span ids onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            setattr(record, key, value)
        span_context = _current_span_context()
        if span_context is not None:
            record.trace_id, record.span_id = span_context
        return True


def _current_span_context() -> tuple[str, str] | None:
    # Only look when OpenTelemetry is already imported: logging must not pull it in.
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def setup_logging(level: str = "INFO", stream: Any = None) -> None:
    """Send JSON lines (timestamp, level, logger, message + context) to stdout."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    )
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The HTTP client logs every retry at INFO; keep it at WARNING unless we debug.
    logging.getLogger("urllib3").setLevel(
        max(logging.getLevelNamesMapping()[level], logging.WARNING)
    )
