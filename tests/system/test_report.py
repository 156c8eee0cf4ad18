"""The job report page: chart data that keeps what matters, a page that shows the job's
numbers, its map, calendar and months, and the page rendered by real headless Chromium
(tiles generated on loopback, or none at all) with working download links."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import numpy as np
import pytest
import urllib3

from shared import config
from shared.dev.tracks import TrackSpec, generate
from shared.engine import Analysis, NamedPlace, analyze, day_window
from shared.report import (
    KM_PER_DEG,
    MAX_POINTS,
    asset,
    render,
    self_contained,
    series_json,
    series_of,
)
from tests.browser import ARTIFACTS, Page, TileServer, browser, closed_port
from tests.stack import Stack


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
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;" in page
    assert 'href="../../download/0b9f3a52-5d3c-4c1e-8f0a-2b6d7e9c1a44"' in page
    # A device named like markup reaches the map's data as text, never as markup.
    series = series_of(analysis)
    series["devices"] = {"</script><img src=x onerror=alert(1)>": series["devices"]["phone1"]}
    page = render(job, series)
    assert "<img src=x" not in page
    assert _map_data(page)["runs"][0]["device"] == "</script><img src=x onerror=alert(1)>"
    assert page.count("<polyline") == 1  # the time chart, one device (the map draws the track)


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
    assert len(_map_data(page)["stays"]) == len(summary["stays"])


def _map_data(page: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="map-data">(.*?)</script>', page, re.S)
    assert found, page[:2000]
    return dict(json.loads(found.group(1)))


def _km_across(bbox: str) -> tuple[float, float]:
    """West-east and south-north extent of a `west,south,east,north` box, in km."""
    west, south, east, north = map(float, bbox.split(","))
    middle = math.radians((south + north) / 2)
    return (east - west) * KM_PER_DEG * math.cos(middle), (north - south) * KM_PER_DEG


def test_the_map_holds_every_fix_of_the_series_in_runs_of_one_day_and_one_trip() -> None:
    analysis = _analysis(days=7, devices=2)
    series = series_of(analysis)
    summary = analysis.summary
    data = _map_data(_page(analysis))
    for device, kept in series["devices"].items():
        runs = [run for run in data["runs"] if run["device"] == device]
        # Each run reaches the next one's first fix: one shared fix per boundary.
        assert sum(len(run["points"]) for run in runs) - (len(runs) - 1) == len(kept["t"])
        assert {run["trip"] for run in runs} == set(kept["trip"])
        first = runs[0]["points"][0]
        cos_home = math.cos(math.radians(summary.parameters.home_latitude))
        north = (first[0] - summary.parameters.home_latitude) * KM_PER_DEG
        east = (first[1] - summary.parameters.home_longitude) * KM_PER_DEG * cos_home
        assert (east, north) == pytest.approx((kept["east"][0], kept["north"][0]), abs=1e-3)
    assert [day["date"] for day in data["days"]] == [f"2024-03-{d}" for d in range(12, 19)]
    assert len(data["stays"]) == len(summary.stays)
    assert {t["id"] for t in data["trips"]} == {t.id for t in summary.trips}
    for device, metrics in summary.devices.items():
        far = metrics.max_distance_at
        assert far is not None
        assert any(
            f["lat"] == far.latitude and f["lon"] == far.longitude and device in f["label"]
            for f in data["farthest"]
        )
    assert data["home"]["exit_m"] == summary.parameters.exit_radius_km * 1000


def test_a_flight_does_not_squash_the_usual_days_of_a_range() -> None:
    analysis = _analysis(days=7, devices=2)
    page = _page(analysis)
    data = _map_data(page)
    far = {day["date"]: day["km"] for day in data["days"]}
    usual = sorted(far.values())[len(far) // 2]
    # The generated week holds flights of more than 1,000 km among short commutes.
    assert max(far.values()) > 1000 > 50 > usual
    assert [day["date"] for day in data["beyond"]] == [
        d for d, km in far.items() if km > 10 * usual
    ]
    assert len(data["beyond"]) == 2  # the flights, not the weekend outings
    (south, west), (north, east) = data["fit"]
    across = _km_across(f"{west},{south},{east},{north}")
    assert max(across) < 2 * max(km for km in far.values() if km < 1000)
    assert "Left out of this view" in page
    for day in data["beyond"]:
        assert f'<option value="day:{day["date"]}">' in page
    # One day alone: nothing is left out of its view.
    single = _map_data(_page(_analysis(days=1)))
    assert single["fit"] is None
    assert single["beyond"] == []


def test_a_range_shows_a_calendar_and_its_months_from_the_days_or_from_the_summary() -> None:
    track = generate(TrackSpec(seed=5, start=dt.date(2024, 3, 28), days=7, devices=1))
    window = day_window(dt.date(2024, 3, 28), dt.date(2024, 4, 3), "America/New_York")
    analysis = analyze(track.points, window, config.AnalysisSettings().engine_params())
    summary = analysis.summary.model_dump(mode="json")
    job = {"job_id": "j", "date": "2024-03-28", "end_date": "2024-04-03", "result": summary}
    page = render(job, series_of(analysis))
    calendar = page[
        page.index('<section class="calendar"') : page.index(
            "</section>", page.index('<section class="calendar"')
        )
    ]
    cells = re.findall(r'<rect data-day="([\d-]+)"', calendar)
    assert cells == [day["date"] for day in summary["days"]]
    table = page[
        page.index('<table id="months">') : page.index(
            "</table>", page.index('<table id="months">')
        )
    ]
    rows = re.findall(
        r"<tr><td>(\w+ \d{4})</td><td>(\d+)</td><td>([\d,]+)</td><td>([\d,.]+) km</td>", table
    )
    assert [(month, int(days)) for month, days, _, _ in rows] == [
        ("March 2024", 4),
        ("April 2024", 3),
    ]
    march = [day for day in summary["days"] if day["date"] < "2024-04"]
    assert int(rows[0][2].replace(",", "")) == sum(day["points_read"] for day in march)
    assert float(rows[0][3].replace(",", "")) == pytest.approx(
        sum(d["path_km"] for d in march), abs=0.05
    )
    # A summary that brings its own month totals is shown as it gives them.
    summary["months"] = [
        {
            "month": "2024-03",
            "days": 4,
            "points_read": 1234567,
            "path_km": 98.76,
            "time_at_home_s": 3600.0,
            "time_away_s": 7200.0,
            "time_unknown_s": 0.0,
        },
    ]
    page = render(job, series_of(analysis))
    table = page[
        page.index('<table id="months">') : page.index(
            "</table>", page.index('<table id="months">')
        )
    ]
    shown = "<td>March 2024</td><td>4</td><td>1,234,567</td><td>98.8 km</td>"
    assert shown + "<td>1 h 00 min</td><td>2 h 00 min</td>" in table
    assert "April 2024" not in table
    # One day has neither.
    single = _page(_analysis())
    assert 'id="calendar"' not in single
    assert 'id="months"' not in single


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "ftp://tiles.example/{z}/{x}/{y}.png",
            "MAP_TILE_URL: must be an http(s) URL template, or none",
        ),
        ("https://tiles.example/{z}/{y}.png", "MAP_TILE_URL: must hold {x}"),
        ("tiles/{z}/{x}/{y}.png", "MAP_TILE_URL: must be an http(s) URL template"),
    ],
)
def test_a_tile_url_that_is_no_template_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("MAP_TILE_URL", value)
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load(config.ReportSettings)


def test_the_tiles_and_their_attribution_come_from_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    default = _map_data(_page(_analysis()))
    assert default["tiles"] == "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    assert "OpenStreetMap" in default["attribution"]
    monkeypatch.setenv("MAP_TILE_URL", "https://tiles.home.lan/{z}/{x}/{y}.png")
    monkeypatch.setenv("MAP_TILE_ATTRIBUTION", "my tiles")
    config.load.cache_clear()
    mine = _map_data(_page(_analysis()))
    assert (mine["tiles"], mine["attribution"]) == (
        "https://tiles.home.lan/{z}/{x}/{y}.png",
        "my tiles",
    )
    monkeypatch.setenv("MAP_TILE_URL", "none")
    config.load.cache_clear()
    assert _map_data(_page(_analysis()))["tiles"] is None


def _drawn(page: Page) -> dict[str, int]:
    """How many of each kind of map layer the page drew."""
    counts = page.evaluate(
        "JSON.stringify(Object.fromEntries(['map-track', 'map-trip', 'map-stay', 'map-place',"
        " 'map-radius', 'map-home', 'map-farthest'].map(function (name) {"
        " return [name, document.querySelectorAll('#map path.' + name).length]; })))"
    )
    return dict(json.loads(counts))


def test_the_report_renders_in_headless_chromium_with_its_map_on_tiles(
    stack: Stack, tiles: TileServer, tmp_path: Path
) -> None:
    reply = urllib3.request(
        "POST", stack.url("submit"), json={"date": "2024-03-12", "device_id": "phone1"}
    )
    job = stack.wait_finished(reply.json()["job"]["job_id"])
    assert job.result is not None
    url = f"{stack.url('status')}/jobs/{job.job_id}/report"
    served = len(tiles.served)
    with browser(tmp_path / "profile") as open_page:
        page = open_page(url)
        assert page.wait_for("document.getElementById('map').dataset.state") == "tiles"
        page.wait_for("document.querySelectorAll('#map img.leaflet-tile-loaded').length >= 4")
        html = page.evaluate("document.documentElement.outerHTML")
        data = _map_data(html)
        drawn = _drawn(page)
        assert page.errors() == []
        screenshot = page.screenshot(ARTIFACTS / "report.png")
        page.screenshot(ARTIFACTS / "report-map.png", "#map-section")
    assert len(tiles.served) - served >= 4
    runs = data["runs"]
    assert drawn["map-track"] == sum(not run["trip"] for run in runs) > 0
    assert (
        drawn["map-trip"]
        == sum(bool(run["trip"]) for run in runs)
        == len({run["trip"] for run in runs} - {0})
    )
    assert drawn["map-stay"] == len(job.result["stays"]) > 0
    assert (drawn["map-radius"], drawn["map-home"], drawn["map-farthest"]) == (2, 1, 1)
    points = job.result["points"]["read"]
    trips = len(job.result["trips"])
    assert f"{points:,}" in html
    assert re.search(rf"<b>{trips}</b><span>trips</span>", html)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    link = re.search(r'<a id="csv" href="([^"]+)"', html)
    assert link is not None
    csv = urllib3.request("GET", urljoin(url, link.group(1)))
    assert csv.status == 200
    assert csv.data.startswith(b"timestamp,device_id,")
    assert csv.data.count(b"\n") == points + 1


def test_status_serves_the_map_script_to_be_cached_for_good(stack: Stack) -> None:
    for name, kind in (("leaflet.js", "text/javascript"), ("leaflet.css", "text/css")):
        answer = urllib3.request("GET", f"{stack.url('status')}/assets/{name}")
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith(kind)
        assert answer.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert answer.data == asset(name)
        again = urllib3.request(
            "GET",
            f"{stack.url('status')}/assets/{name}",
            headers={"If-None-Match": answer.headers["ETag"]},
        )
        assert (again.status, again.data) == (304, b"")
    assert b"Leaflet 1.9.4" in (asset("leaflet.js") or b"")
    missing = urllib3.request("GET", f"{stack.url('status')}/assets/leaflet.map")
    assert missing.status == 404
    assert missing.json()["error"] == "no such resource: /assets/leaflet.map"


def _saved(analysis: Analysis, folder: Path, name: str) -> str:
    """The report page as the demo saves it (script and style inlined), as a file URL."""
    path = folder / name
    path.write_text(self_contained(_page(analysis)), encoding="utf-8")
    return path.as_uri()


def test_without_tiles_a_saved_page_shows_everything_on_a_plain_map(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = closed_port()
    monkeypatch.setenv("MAP_TILE_URL", f"http://127.0.0.1:{port}/{{z}}/{{x}}/{{y}}.png")
    # The longest stay away from home gets a name: the map labels it.
    plain = _analysis(days=1, devices=2)
    office = max((v for v in plain.summary.stays if v.place != "home"), key=lambda v: v.duration_s)
    track = generate(TrackSpec(seed=3, start=dt.date(2024, 3, 12), days=1, devices=2))
    params = (
        config.AnalysisSettings()
        .engine_params()
        .model_copy(
            update={
                "places": (
                    NamedPlace(
                        name="Office <b>",
                        latitude=office.latitude,
                        longitude=office.longitude,
                        radius_m=300,
                    ),
                )
            }
        )
    )
    window = day_window(dt.date(2024, 3, 12), dt.date(2024, 3, 12), "America/New_York")
    analysis = analyze(track.points, window, params)
    url = _saved(analysis, tmp_path, "saved.report.html")
    with browser(tmp_path / "profile") as open_page:
        page = open_page(url)
        assert page.wait_for("document.getElementById('map').dataset.state") == "plain"
        assert page.evaluate("document.querySelectorAll('#map img.leaflet-tile').length") == 0
        assert "plain background" in page.evaluate(
            "document.getElementById('map-status').textContent"
        )
        scale = page.evaluate("document.querySelector('#map .leaflet-control-scale').textContent")
        drawn = _drawn(page)
        labels = page.evaluate(
            "Array.from(document.querySelectorAll('#map .leaflet-tooltip'), e => e.textContent)"
        )
        errors = page.errors()
        page.screenshot(ARTIFACTS / "report-plain-map.png", "#map-section")
    assert re.search(r"\d+ (m|km)", scale), scale
    data = _map_data(url_text := (tmp_path / "saved.report.html").read_text())
    assert "../../assets/" not in url_text  # nothing to fetch but the tiles
    assert drawn["map-track"] + drawn["map-trip"] == len(data["runs"])
    assert drawn["map-stay"] == len(analysis.summary.stays) > 0
    assert drawn["map-farthest"] == 2
    assert drawn["map-place"] == 1
    assert labels == ["Office <b>"]  # its name, as text, always shown
    # The refused tiles are the only failures: no script error, nothing else missing.
    assert errors, "the tiles should have been refused"
    for error in errors:
        assert f"127.0.0.1:{port}/" in error, error
        assert "ERR_CONNECTION_REFUSED" in error, error


def test_a_range_map_fits_the_usual_days_and_shows_one_day_or_everything(
    tiles: TileServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAP_TILE_URL", tiles.template)
    analysis = _analysis(days=7, devices=2)
    url = _saved(analysis, tmp_path, "week.report.html")
    data = _map_data((tmp_path / "week.report.html").read_text())
    far_day = max(data["days"], key=lambda day: day["km"])
    with browser(tmp_path / "profile", height=900) as open_page:
        page = open_page(url)
        assert page.wait_for("document.getElementById('map').dataset.state") == "tiles"
        usual = _km_across(page.wait_for("document.getElementById('map').dataset.bounds"))
        page.screenshot(ARTIFACTS / "report-week-map.png", "#map-section")

        def choose(view: str) -> tuple[float, float]:
            page.evaluate(
                "var s = document.getElementById('map-view');"
                f" s.value = {json.dumps(view)}; s.dispatchEvent(new Event('change'))"
            )
            page.wait_for(f"document.getElementById('map').dataset.view === {json.dumps(view)}")
            return _km_across(page.evaluate("document.getElementById('map').dataset.bounds"))

        everything = choose("all")
        one_day = choose(f"day:{far_day['date']}")
        shown = _drawn(page)
        page.screenshot(ARTIFACTS / "report-week-one-day.png", "#map-section")
        # A click on the day in the calendar shows that day too.
        page.evaluate(
            "document.querySelector('rect[data-day=\"2024-03-12\"]')"
            ".dispatchEvent(new MouseEvent('click'))"
        )
        assert page.wait_for("document.getElementById('map').dataset.view") == "day:2024-03-12"
        errors = page.errors()
    # The usual days fill the map; the flights would make it ten times as wide.
    assert max(usual) < 4 * max(day["km"] for day in data["days"] if day not in data["beyond"])
    assert max(everything) > 10 * max(usual)
    assert max(one_day) >= far_day["km"]
    day_runs = [run for run in data["runs"] if run["date"] == far_day["date"]]
    assert shown["map-track"] + shown["map-trip"] == len(day_runs) < len(data["runs"])
    assert errors == []


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
