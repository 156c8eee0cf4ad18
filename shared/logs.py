"""Logging on stdout, with request context (job id) and trace ids: JSON lines for machines,
one readable line per record for a person at a terminal.

`setup_logging` is called once by each process entry point. Context such as the job id is
bound with `log_context`, so every line written inside it carries the fields without
passing them to each call. `readable_line` turns a JSON line into the readable form, which
`otel-worker dev` does for the services it runs (their output is a pipe, so JSON).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["auto", "json", "text"]

# Fields a readable line leaves out: shown otherwise (time, level, message), already in the
# prefix of `otel-worker dev` (service), or too long to help a reader (trace ids).
_NOT_SHOWN = frozenset(
    {"timestamp", "level", "logger", "message", "exc_info", "trace_id", "span_id", "service"}
)
# What a LogRecord carries of its own; anything else on it was added (extra=, log_context).
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}

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


def _value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if not text or any(c in text for c in ' "=') else text


def readable(
    when: dt.datetime, level: str, message: str, fields: Mapping[str, object], trace: str = ""
) -> str:
    """One record as a person reads it: `HH:MM:SS LEVEL message  key=value ...`, then any
    traceback on the lines below."""
    shown = "  ".join(f"{key}={_value(value)}" for key, value in fields.items())
    line = f"{when:%H:%M:%S} {level:<7} {message}" + (f"  {shown}" if shown else "")
    return line + (f"\n{trace.rstrip()}" if trace else "")


def readable_line(line: str) -> str:
    """A JSON log line in the readable form; any other line as it is."""
    try:
        record = json.loads(line)
        when = dt.datetime.fromisoformat(record["timestamp"]).astimezone()
        level, message = str(record["level"]), str(record["message"])
    except (ValueError, TypeError, KeyError):
        return line
    fields = {k: v for k, v in record.items() if k not in _NOT_SHOWN}
    return readable(when, level, message, fields, str(record.get("exc_info") or ""))


class TextFormatter(logging.Formatter):
    """The readable form of `readable`, for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            k: v
            for k, v in vars(record).items()
            if k not in _RECORD_ATTRIBUTES and k not in _NOT_SHOWN
        }
        trace = self.formatException(record.exc_info) if record.exc_info else ""
        when = dt.datetime.fromtimestamp(record.created).astimezone()
        return readable(when, record.levelname, record.getMessage(), fields, trace)


def json_formatter() -> logging.Formatter:
    """One JSON object per line: timestamp, level, logger, message, then the added fields."""
    return JsonFormatter(
        "{asctime}{levelname}{name}{message}",
        style="{",
        rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


def wants_text(log_format: LogFormat, stream: Any) -> bool:
    """Whether logs written to `stream` should be readable lines: `text`, or `auto` on a
    terminal (JSON for anything else: files, pipes, log collectors)."""
    if log_format != "auto":
        return log_format == "text"
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def setup_logging(level: str = "INFO", stream: Any = None, log_format: LogFormat = "auto") -> None:
    """Send log records to `stream` (stdout): JSON lines (timestamp, level, logger, message
    + context), or readable lines when `wants_text`."""
    stream = stream or sys.stdout
    handler = logging.StreamHandler(stream)
    text = wants_text(log_format, stream)
    handler.setFormatter(TextFormatter() if text else json_formatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The HTTP client logs every retry at INFO; keep it at WARNING unless we debug.
    logging.getLogger("urllib3").setLevel(
        max(logging.getLevelNamesMapping()[level], logging.WARNING)
    )
