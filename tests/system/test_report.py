"""The job report page: chart data that keeps what matters, a page that shows the job's
numbers, and the page rendered by real headless Chromium with working download links."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import numpy as np
import pytest
import urllib3

from shared import config
from shared.dev.tracks import TrackSpec, generate
from shared.engine import Analysis, analyze, day_window
from shared.report import MAX_POINTS, render, series_json, series_of
from tests.stack import Stack

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def _analysis(days: int = 1, devices: int = 1) -> Analysis:
    track = generate(TrackSpec(seed=3, start=dt.date(2024, 3, 12), days=days, devices=devices))
    window = day_window(dt.date(2024, 3, 12), dt.date(2024, 3, 11 + days), "America/New_York")
    return analyze(track.points, window, config.AnalysisSettings().engine_params())


def test_series_is_bounded_time_ordered_and_keeps_the_farthest_point() -> None:
    analysis = _analysis(days=7, devices=2)
    series = series_of(analysis)
    assert set(series["devices"]) == {"phone1", "phone2"}
    for device, data in series["devices"].items():
        assert 0 < len(data["t"]) <= MAX_POINTS
        assert data["t"] == sorted(data["t"])
        assert len(data["km"]) == len(data["east"]) == len(data["north"]) == len(data["t"])
        # The farthest fix (the summary's farthest counts a stay's fixes at its centre).
        mine = analysis.points.device == analysis.points.device_ids.index(device)
        seen = mine & np.isin(analysis.dropped_by, [0, 5])  # kept and jitter
        assert max(data["km"]) == pytest.approx(analysis.distance_km[seen].max(), abs=1e-4)
        # East/north offsets agree with the distance from home (flat within a few %).
        flat = np.hypot(data["east"], data["north"])
        assert np.allclose(flat, data["km"], rtol=0.05, atol=0.01)
    # What compute stores reads back as exactly this series.
    assert json.loads(series_json(analysis)) == series


def test_render_shows_the_numbers_and_escapes_what_it_is_given() -> None:
    analysis = _analysis()
    summary = analysis.summary.model_dump(mode="json")
    job = {
        "job_id": "0b9f3a52-5d3c-4c1e-8f0a-2b6d7e9c1a44",
        "date": "2024-03-12",
        "end_date": "2024-03-12",
        "device_id": "<script>alert(1)</script>",
        "result": summary,
    }
    page = render(job, series_of(analysis))
    assert f"{summary['points']['read']:,}" in page
    assert f"<b>{len(summary['trips'])}</b><span>trips</span>" in page
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert 'href="../../download/0b9f3a52-5d3c-4c1e-8f0a-2b6d7e9c1a44"' in page
    assert page.count("<polyline") == 2  # the time chart and the track, one device


def _page(analysis: Analysis) -> str:
    job = {
        "job_id": "0b9f3a52-5d3c-4c1e-8f0a-2b6d7e9c1a44",
        "date": analysis.summary.window.first_day.isoformat(),
        "end_date": analysis.summary.window.last_day.isoformat(),
        "device_id": None,
        "result": analysis.summary.model_dump(mode="json"),
    }
    return render(job, series_of(analysis))


def test_a_range_of_two_devices_says_its_times_are_sums_and_shows_each_day() -> None:
    analysis = _analysis(days=3, devices=2)
    page = _page(analysis)
    # Two phones at home all day make more than 24 h "at home": the cards say why.
    home = analysis.summary.time_at_home_s
    assert home > 24 * 3600 * 3 / 2
    assert "<span>at home, summed over 2 devices</span>" in page
    assert "<span>away, summed over 2 devices</span>" in page
    table = re.search(r'<table id="days">(.*?)</table>', page, re.S)
    assert table, page
    rows = re.findall(r"<tr><td>(\d{4}-\d\d-\d\d)</td><td>([\d,]+)</td>", table.group(1))
    assert [day for day, _ in rows] == ["2024-03-12", "2024-03-13", "2024-03-14"]
    assert sum(int(read.replace(",", "")) for _, read in rows) == analysis.summary.points.read
    assert "Figures of each day, summed over 2 devices." in page
    assert '<h2>Time per place</h2>\n<p class="sub">Times, summed over 2 devices.</p>' in page


def test_one_device_on_one_day_has_plain_cards_and_no_day_table() -> None:
    page = _page(_analysis())
    assert "<span>at home</span>" in page
    assert "summed over" not in page
    assert 'id="days"' not in page


def test_render_shows_the_day_as_a_timeline_and_the_time_per_place() -> None:
    analysis = _analysis()
    summary = analysis.summary.model_dump(mode="json")
    job = {"job_id": "j", "date": "2024-03-12", "end_date": "2024-03-12", "result": summary}
    page = render(job, series_of(analysis))
    timeline = page[page.index('<section id="timeline">') : page.index("Time per place")]
    entries = summary["devices"]["phone1"]["days"][0]["timeline"]
    assert timeline.count("<tr class=") == len(entries)
    assert timeline.count('<i class="stay"') == sum(e["kind"] == "stay" for e in entries)
    widths = [float(w) for w in re.findall(r"width: ([0-9.]+)%", timeline)]
    assert sum(widths) == pytest.approx(100, abs=0.01)
    first = dt.datetime.fromisoformat(entries[0]["start"])
    assert f"<td>{first:%H:%M}\u2013" in timeline
    places = page[page.index('<table id="places">') : page.index("<h2>Trips")]
    assert places.count('<tr class="place">') == len(summary["places"])
    assert "home" in places
    assert page.count('class="stay" cx=') == len(summary["stays"])


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed: run `make system-deps`")
    return found


def test_the_report_renders_in_headless_chromium(stack: Stack, tmp_path: Path) -> None:
    reply = urllib3.request(
        "POST", stack.url("submit"), json={"date": "2024-03-12", "device_id": "phone1"}
    )
    job = stack.wait_finished(reply.json()["job"]["job_id"])
    assert job.result is not None
    url = f"{stack.url('status')}/jobs/{job.job_id}/report"
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    flags = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1100,1900",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    )
    shot = subprocess.run(
        [*flags, f"--screenshot={screenshot}", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    page = dom.stdout
    console = [
        line for line in dom.stderr.splitlines() + shot.stderr.splitlines() if "CONSOLE" in line
    ]
    assert console == [], console
    points = job.result["points"]["read"]
    trips = len(job.result["trips"])
    assert f"{points:,}" in page
    assert re.search(rf"<b>{trips}</b><span>trips</span>", page)
    assert page.count("<tr>") == max(trips, 1) + 1
    assert screenshot.stat().st_size > 20_000
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    link = re.search(r'<a id="csv" href="([^"]+)"', page)
    assert link is not None
    csv = urllib3.request("GET", urljoin(url, link.group(1)))
    assert csv.status == 200
    assert csv.data.startswith(b"timestamp,device_id,")
    assert csv.data.count(b"\n") == points + 1


def test_a_report_whose_data_expired_is_gone_not_unavailable(stack: Stack) -> None:
    reply = urllib3.request(
        "POST", stack.url("submit"), json={"date": "2024-03-13", "device_id": "phone2"}
    )
    job = stack.wait_finished(reply.json()["job"]["job_id"])
    assert job.summary_key is not None
    series = job.summary_key.replace(".summary.json", ".series.json")
    stack.s3.client().remove_object(stack.bucket, series)  # as the lifecycle rule would
    gone = urllib3.request("GET", f"{stack.url('status')}/jobs/{job.job_id}/report")
    assert gone.status == 410
    assert gone.json()["error"].startswith(f"job {job.job_id}: its report's data is no longer")


def test_an_address_with_a_trailing_slash_leads_to_the_report_and_its_links(
    stack: Stack,
) -> None:
    reply = urllib3.request(
        "POST", stack.url("submit"), json={"date": "2024-03-14", "device_id": "phone1"}
    )
    job = stack.wait_finished(reply.json()["job"]["job_id"])
    slashed = f"{stack.url('status')}/jobs/{job.job_id}/report/"
    moved = urllib3.request("GET", slashed, redirect=False)
    assert moved.status == 308
    assert moved.headers["Location"] == "../report"
    # Whatever the last segment holds, it comes back the same.
    encoded = f"{stack.url('status')}/download/a%3Fb/"
    relative = urllib3.request("GET", encoded, redirect=False).headers["Location"]
    assert urlsplit(urljoin(encoded, relative)).path == "/download/a%3Fb"
    page = urllib3.request("GET", urljoin(slashed, "../report"))
    assert page.status == 200
    link = re.search(r'<a id="csv" href="([^"]+)"', page.data.decode())
    assert link is not None
    csv = urllib3.request("GET", urljoin(urljoin(slashed, "../report"), link.group(1)))
    assert csv.status == 200
    assert csv.data.startswith(b"timestamp,device_id,")


def test_a_failed_job_has_no_report_and_says_why(stack: Stack) -> None:
    reply = urllib3.request(
        "POST", stack.url("submit"), json={"date": "2024-03-15", "device_id": "phone1"}
    )
    job_id = reply.json()["job"]["job_id"]
    stack.wait_finished(job_id)
    with stack.db() as conn:  # as if every attempt had failed
        conn.execute(
            "UPDATE otel_worker.jobs SET status = 'failed', error_message = 'gave up: boom'"
            " WHERE id = %s",
            (job_id,),
        )
    answer = urllib3.request("GET", f"{stack.url('status')}/jobs/{job_id}/report")
    assert answer.status == 409
    assert answer.json()["error"] == f"job {job_id} failed: it has no report (gave up: boom)"


def test_no_report_before_the_job_completes(stack: Stack) -> None:
    missing = urllib3.request(
        "GET", f"{stack.url('status')}/jobs/00000000-0000-4000-8000-000000000000/report"
    )
    assert missing.status == 404
