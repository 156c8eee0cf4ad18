"""The CSV and GeoJSON a user downloads: every fix, readable, and true to the analysis."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import pytest

from shared import export
from shared.dev.tracks import TrackSpec, generate
from shared.engine import DROP_RULES, Analysis, EngineParams, analyze, day_window
from shared.engine.points import Points, tracker_id
from shared.tools.sources import read_locations_csv

HOME = (40.736097, -74.039373)
TZ = "America/New_York"


@pytest.fixture(scope="module")
def dst_day() -> Analysis:
    spec = TrackSpec(days=3, devices=2, seed=2, start=dt.date(2024, 3, 9))
    params = EngineParams(home_latitude=HOME[0], home_longitude=HOME[1])
    window = day_window(dt.date(2024, 3, 10), dt.date(2024, 3, 11), TZ)
    return analyze(generate(spec).points, window, params)


def rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_one_header_one_row_per_fix_read_no_footer(dst_day: Analysis) -> None:
    data = export.csv_bytes(dst_day)
    lines = data.decode().splitlines()
    assert lines[0] == ",".join(export.CSV_COLUMNS)
    assert len(lines) == 1 + dst_day.summary.points.read
    assert data.endswith(b"\n")


def test_rows_hold_the_analysis(dst_day: Analysis) -> None:
    table = rows(export.csv_bytes(dst_day))
    points = dst_day.points
    assert [r["device_id"] for r in table] == [points.device_ids[d] for d in points.device]
    assert np.allclose([float(r["latitude"]) for r in table], points.lat, atol=6e-8)
    assert np.allclose([float(r["longitude"]) for r in table], points.lon, atol=6e-8)
    assert np.allclose(
        [float(r["distance_from_home_km"]) for r in table], dst_day.distance_km, atol=6e-7
    )
    assert np.allclose([float(r["cumulative_km"]) for r in table], dst_day.cumulative_km, atol=6e-7)
    assert [r["dropped_by"] for r in table] == [("", *DROP_RULES)[k] for k in dst_day.dropped_by]
    assert {r["at_home"] for r in table} <= {"true", "false", ""}
    trips = {r["trip"] for r in table} - {""}
    assert trips == {str(t.id) for t in dst_day.summary.trips}
    accuracy = [r["accuracy"] for r in table]
    assert [a == "" for a in accuracy] == (points.accuracy == -1).tolist()
    # The device's last cumulative value is its path.
    last = {r["device_id"]: float(r["cumulative_km"]) for r in table}
    for device, km in last.items():
        assert km == pytest.approx(dst_day.summary.devices[device].path_km, abs=1e-5)


def test_timestamps_are_local_with_the_offset_of_their_moment(dst_day: Analysis) -> None:
    table = rows(export.csv_bytes(dst_day))
    times = [dt.datetime.fromisoformat(r["timestamp"]) for r in table]
    assert [round(t.timestamp() * 1e6) for t in times] == dst_day.points.timestamp.tolist()
    offsets = {t.utcoffset() for t in times}
    assert offsets == {dt.timedelta(hours=-5), dt.timedelta(hours=-4)}
    assert table[0]["timestamp"].startswith("2024-03-10T00:")


def test_odd_values_are_written_correctly() -> None:
    window = day_window(dt.date(2024, 1, 1), dt.date(2024, 1, 1), "Asia/Kolkata")
    t = window.start_us + np.array([0, 1, 2]) * 1_000_000 + 250_000
    points = Points.from_columns(
        ['a "quoted", device'],
        device=[0, 0, 0],
        timestamp=t,
        lat=[-33.5, 95.0, -0.0000001],
        lon=[-70.25, 10.0, 179.9999999],
        accuracy=[0, -1, 12345],
        velocity=[-1, 7, 0],
        battery=[100, 5, -1],
    )
    params = EngineParams(home_latitude=-33.5, home_longitude=-70.25, max_accuracy_m=None)
    table = rows(export.csv_bytes(analyze(points, window, params)))
    assert [r["device_id"] for r in table] == ['a "quoted", device'] * 3
    assert table[0]["timestamp"] == "2024-01-01T00:00:00.250000+05:30"
    assert [r["latitude"] for r in table] == ["-33.5000000", "95.0000000", "-0.0000001"]
    assert [r["longitude"] for r in table] == ["-70.2500000", "10.0000000", "179.9999999"]
    assert [r["accuracy"] for r in table] == ["0", "", "12345"]
    assert [r["velocity"] for r in table] == ["", "7", "0"]
    assert [r["battery"] for r in table] == ["100", "5", ""]
    assert table[1]["distance_from_home_km"] == ""
    assert table[1]["dropped_by"] == "invalid"
    assert table[0]["distance_from_home_km"] == "0.000000"


def test_coordinates_that_cannot_be_written_in_fixed_point_are_blank() -> None:
    # PostgreSQL's double precision holds 'Infinity'; such fixes are invalid and say so.
    window = day_window(dt.date(2024, 1, 1), dt.date(2024, 1, 1), TZ)
    bad = [np.inf, -np.inf, np.nan, 1e300, -1e19]
    points = Points.from_columns(
        ["phone"],
        device=np.zeros(len(bad) + 1),
        timestamp=window.start_us + np.arange(len(bad) + 1) * 60_000_000,
        lat=[*bad, HOME[0]],
        lon=[*(-np.array(bad)), HOME[1]],
    )
    params = EngineParams(home_latitude=HOME[0], home_longitude=HOME[1])
    table = rows(export.csv_bytes(analyze(points, window, params)))
    assert [(r["latitude"], r["longitude"], r["dropped_by"]) for r in table[:-1]] == [
        ("", "", "invalid")
    ] * len(bad)
    assert (table[-1]["latitude"], table[-1]["longitude"]) == ("40.7360970", "-74.0393730")


def test_the_csv_goes_to_a_path_or_a_binary_stream(dst_day: Analysis, tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    written = export.write_csv(dst_day, target)
    assert target.read_bytes() == export.csv_bytes(dst_day)
    assert written == target.stat().st_size
    stream = io.BytesIO()
    assert export.write_csv(dst_day, stream) == written


def test_an_empty_analysis_is_a_header_only_csv() -> None:
    window = day_window(dt.date(2024, 1, 1), dt.date(2024, 1, 1), TZ)
    empty = analyze(Points.empty(), window, EngineParams(home_latitude=0, home_longitude=0))
    assert export.csv_bytes(empty) == (",".join(export.CSV_COLUMNS) + "\n").encode()


def test_a_locations_export_reads_back_as_the_same_fixes(tmp_path: Path) -> None:
    points = generate(TrackSpec(days=2, devices=2, seed=9)).points
    target = tmp_path / "locations.csv"
    assert export.write_locations_csv(points, target) == len(points)
    back = read_locations_csv(target.read_text(), target)
    assert back.device_ids == points.device_ids
    assert np.array_equal(back.timestamp, points.timestamp)
    assert np.array_equal(back.created_at, points.created_at)
    assert np.allclose(back.lat, points.lat, atol=6e-8)
    for name in ("accuracy", "velocity", "battery", "device"):
        assert np.array_equal(getattr(back, name), getattr(points, name))
    header = target.read_text().splitlines()[0].split(",")
    assert header == list(export.LOCATIONS_COLUMNS)


def test_geojson_shows_home_radii_tracks_trips_and_the_farthest_point(
    dst_day: Analysis, tmp_path: Path
) -> None:
    target = tmp_path / "map.geojson"
    export.write_geojson(dst_day, target)
    data = json.loads(target.read_text())
    assert data["type"] == "FeatureCollection"
    kinds = [f["properties"]["kind"] for f in data["features"]]
    assert kinds[:3] == ["home", "exit_radius", "enter_radius"]
    assert kinds.count("track") == len(dst_day.summary.devices)
    assert kinds.count("trip") == len(dst_day.summary.trips)
    assert kinds[-1] == "max_distance"
    for radius in data["features"][1:3]:
        ring = radius["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1]
        assert len(ring) == 65
        # RFC 7946: exterior rings are counter-clockwise (positive shoelace area).
        x, y = np.array(ring).T
        assert float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1])) > 0
    track = next(f for f in data["features"] if f["properties"]["kind"] == "track")
    assert track["geometry"]["type"] == "LineString"
    assert all(
        -180 <= lon <= 180 and -90 <= lat <= 90 for lon, lat in track["geometry"]["coordinates"]
    )
    stream = io.BytesIO()
    assert export.write_geojson(dst_day, stream) == len(stream.getvalue())


HOSTILE_IDS = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "@SUM(1)", "-2+3", "\tx", "\rx"]


def _hostile_points(window_start: int) -> Points:
    n = len(HOSTILE_IDS)
    return Points.from_columns(
        HOSTILE_IDS,
        device=np.arange(n),
        timestamp=window_start + np.arange(n) * 60_000_000,
        lat=np.full(n, HOME[0] - 0.5),
        lon=np.full(n, HOME[1]),
        accuracy=np.full(n, 10),
        velocity=np.full(n, -3),
        battery=np.full(n, 50),
    )


def test_a_device_id_a_spreadsheet_would_run_as_a_formula_is_written_as_text() -> None:
    window = day_window(dt.date(2024, 1, 1), dt.date(2024, 1, 1), TZ)
    params = EngineParams(home_latitude=HOME[0], home_longitude=HOME[1], max_speed_kmh=None)
    table = rows(export.csv_bytes(analyze(_hostile_points(window.start_us), window, params)))
    assert sorted(r["device_id"] for r in table) == sorted("'" + d for d in HOSTILE_IDS)
    # Numbers stay numbers: a negative one is not a formula and gets no quote.
    assert all(r["longitude"] == "-74.0393730" for r in table)
    assert all(float(r["distance_from_home_km"]) > 55 for r in table)


def test_a_locations_export_neutralises_formula_cells_too(tmp_path: Path) -> None:
    target = tmp_path / "locations.csv"
    export.write_locations_csv(_hostile_points(1_700_000_000_000_000), target)
    table = rows(target.read_bytes())
    assert [r["device_id"] for r in table] == ["'" + d for d in HOSTILE_IDS]
    # tid is derived from the device id: one that starts a formula is neutralised too.
    tids = [tracker_id(d) for d in HOSTILE_IDS]
    assert [r["tid"] for r in table] == ["'" + t if t[0] in "=+-@\t\r" else t for t in tids]
    assert any(t[0] in "=+-@" for t in tids)
    assert table[0]["longitude"] == "-74.0393730"


def test_each_fix_names_its_stay_in_the_last_column(dst_day: Analysis) -> None:
    table = rows(export.csv_bytes(dst_day))
    assert export.CSV_COLUMNS[-1] == "stay"
    stays = {stay.id: stay for stay in dst_day.summary.stays}
    assert stays
    in_stay = [row for row in table if row["stay"]]
    assert {int(row["stay"]) for row in in_stay} == set(stays)
    for row in in_stay:
        stay = stays[int(row["stay"])]
        assert row["device_id"] == stay.device_id
        assert row["dropped_by"] in ("", "jitter")  # a dropped fix belongs to no stay
        assert stay.start <= dt.datetime.fromisoformat(row["timestamp"]) <= stay.end


def test_geojson_marks_stays_and_places(dst_day: Analysis) -> None:
    features = export.geojson(dst_day)["features"]
    stays = [f for f in features if f["properties"]["kind"] == "stay"]
    assert [f["properties"]["id"] for f in stays] == [s.id for s in dst_day.summary.stays]
    first = stays[0]["properties"]
    assert stays[0]["geometry"]["coordinates"] == [first["longitude"], first["latitude"]]
    assert {"start", "end", "duration_s", "place"} <= set(first)
    places = [f["properties"] for f in features if f["properties"]["kind"] == "place"]
    assert {p["place"] for p in places} == {s.place for s in dst_day.summary.stays}
    assert next(p for p in places if p["place"] == "home")["place_kind"] == "home"
