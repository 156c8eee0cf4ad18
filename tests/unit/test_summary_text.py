"""The summary table of `analyze` and `submit --wait`: times summed over devices say so, and
a range shows each of its days."""

from __future__ import annotations

import datetime as dt
import io
import re

from shared import config
from shared.dev.tracks import TrackSpec, generate
from shared.engine import Summary, analyze, day_window
from shared.tools.analyze import write_table


def _summary(days: int, devices: int) -> Summary:
    track = generate(TrackSpec(seed=3, start=dt.date(2024, 3, 12), days=days, devices=devices))
    window = day_window(dt.date(2024, 3, 12), dt.date(2024, 3, 11 + days), "America/New_York")
    return analyze(track.points, window, config.AnalysisSettings().engine_params()).summary


def _text(summary: Summary) -> str:
    out = io.StringIO()
    write_table(summary, out)
    return out.getvalue()


def test_times_of_two_devices_are_labelled_as_sums() -> None:
    text = _text(_summary(days=1, devices=2))
    time = re.search(r"^Time +at home (\d+)h\d\dm, .*$", text, re.M)
    assert time, text
    assert int(time.group(1)) >= 24  # two phones make a day of more than 24 h at home
    assert time.group(0).endswith("(summed over 2 devices)")
    assert "Days" not in text  # one day: the totals are that day
    assert re.search(r"^Places \(times summed over 2 devices\)$", text, re.M), text


def test_a_range_shows_one_row_per_day_adding_up_to_the_totals() -> None:
    summary = _summary(days=3, devices=2)
    text = _text(summary)
    assert re.search(r"^Days +\(summed over 2 devices\)$", text, re.M), text
    rows = re.findall(r"^  (\d{4}-\d\d-\d\d) +(\d+) +(\d+) +([\d.]+) ", text, re.M)
    assert [day for day, *_ in rows] == ["2024-03-12", "2024-03-13", "2024-03-14"]
    assert sum(int(read) for _, read, _, _ in rows) == summary.points.read
    assert sum(int(used) for _, _, used, _ in rows) == summary.points.used
    assert abs(sum(float(km) for *_, km in rows) - summary.path_km) < 0.01


def test_one_device_reads_plainly() -> None:
    text = _text(_summary(days=2, devices=1))
    assert "summed over" not in text
    assert re.search(r"^Days$", text, re.M), text
    assert re.search(r"^Places$", text, re.M), text
