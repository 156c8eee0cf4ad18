"""JSON log lines: the fields operators filter on, context binding, levels."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from shared.logs import log_context, setup_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()
    yield buffer
    root.handlers[:], root.level = saved


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_line_with_the_standard_fields(stream: io.StringIO) -> None:
    setup_logging("INFO", stream)
    logging.getLogger("otel.test").info("job %s queued", "abc", extra={"attempt": 2})
    (line,) = _lines(stream)
    assert line["message"] == "job abc queued"
    assert line["level"] == "INFO"
    assert line["logger"] == "otel.test"
    assert line["attempt"] == 2
    assert str(line["timestamp"]).startswith("20")


def test_bound_context_is_on_every_line_inside_the_block_only(stream: io.StringIO) -> None:
    setup_logging("INFO", stream)
    log = logging.getLogger("otel.test")
    with log_context(job_id="j-1"):
        log.info("inside")
        with log_context(attempt=3):
            log.info("nested")
    log.info("outside")
    inside, nested, outside = _lines(stream)
    assert inside["job_id"] == "j-1"
    assert nested["job_id"] == "j-1"
    assert nested["attempt"] == 3
    assert "job_id" not in outside


def test_level_filters_lower_records(stream: io.StringIO) -> None:
    setup_logging("WARNING", stream)
    log = logging.getLogger("otel.test")
    log.info("hidden")
    log.warning("shown")
    assert [line["message"] for line in _lines(stream)] == ["shown"]


def test_exceptions_are_logged_inside_the_json_line(stream: io.StringIO) -> None:
    setup_logging("INFO", stream)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("otel.test").exception("failed")
    (line,) = _lines(stream)
    assert "ValueError: boom" in str(line["exc_info"])
