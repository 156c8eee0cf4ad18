"""Log lines as `otel-worker dev` shows them: one readable line per record on a terminal,
JSON off a terminal or with LOG_FORMAT=json, and dev's readable form of a service's JSON."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from shared.logs import LogFormat, readable_line, setup_logging


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def keep_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:], root.level = saved


def test_a_terminal_gets_one_readable_line_per_record(keep_logging: None) -> None:
    out = _Terminal()
    setup_logging("INFO", out)
    logging.getLogger("submit").info(
        "job queued", extra={"job_id": "j-1", "service": "otel-worker-submit", "why": "a b"}
    )
    (line,) = out.getvalue().splitlines()
    assert not line.startswith("{")
    # time, level, message, then the key fields (the service is in dev's prefix already).
    assert line[8:] == ' INFO    job queued  job_id=j-1  why="a b"'


@pytest.mark.parametrize(("stream", "log_format"), [(io.StringIO(), "auto"), (_Terminal(), "json")])
def test_json_stays_the_format_off_a_terminal_or_when_asked_for(
    keep_logging: None, stream: io.StringIO, log_format: LogFormat
) -> None:
    setup_logging("INFO", stream, log_format)
    logging.getLogger("submit").info("job queued", extra={"job_id": "j-1"})
    assert json.loads(stream.getvalue())["job_id"] == "j-1"


def test_a_json_line_reads_as_the_same_readable_line_and_other_text_passes() -> None:
    record = {
        "timestamp": "2024-03-12T10:00:00+0000",
        "level": "ERROR",
        "logger": "compute",
        "message": "upload failed",
        "job_id": "j-2",
        "attempt": 2,
        "trace_id": "0" * 32,
        "exc_info": "Traceback (most recent call last):\nOSError: boom",
    }
    first, *trace = readable_line(json.dumps(record)).splitlines()
    assert first.endswith(" ERROR   upload failed  job_id=j-2  attempt=2")
    assert trace == ["Traceback (most recent call last):", "OSError: boom"]
    assert readable_line("[2024-03-12] gunicorn booting\n") == "[2024-03-12] gunicorn booting\n"
