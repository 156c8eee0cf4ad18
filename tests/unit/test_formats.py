"""GPX, GeoJSON and Google Takeout files: read by content, streamed, the same day in each."""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import json
import os
import re
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shared import export
from shared.cli import main
from shared.engine.points import MISSING, Points
from shared.tools import formats
from shared.tools.sources import SourceError, read_file

REC = Path(__file__).resolve().parents[1] / "fixtures" / "owntracks-day.rec"
BERLIN = ["--tz", "Europe/Berlin", "--home", "51.3397,12.3731"]
T0 = 1710072000  # 2024-03-10T12:00:00Z


def iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).isoformat().replace("+00:00", "Z")


def as_gpx(points: Points) -> str:
    rows = "".join(
        f'<trkpt lat="{lat!r}" lon="{lon!r}"><time>{iso(t)}</time>'
        f"<extensions><x:accuracy>{acc}</x:accuracy></extensions></trkpt>\n"
        for t, lat, lon, acc in zip(
            points.timestamp.tolist(),
            points.lat.tolist(),
            points.lon.tolist(),
            points.accuracy.tolist(),
            strict=True,
        )
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<gpx version="1.1" creator="test" xmlns="http://www.topografix.com/GPX/1/1" '
        'xmlns:x="urn:example:x">\n<trk><trkseg>\n' + rows + "</trkseg></trk></gpx>\n"
    )


def as_records(points: Points) -> str:
    locations = [
        {
            "latitudeE7": round(lat * 1e7),
            "longitudeE7": round(lon * 1e7),
            "accuracy": acc,
            **({"velocity": vel / 3.6} if vel != MISSING else {}),
            # Both time styles of the years Takeout wrote them.
            **({"timestamp": iso(t)} if k % 2 else {"timestampMs": str(t // 1000)}),
        }
        for k, (t, lat, lon, acc, vel) in enumerate(
            zip(
                points.timestamp.tolist(),
                points.lat.tolist(),
                points.lon.tolist(),
                points.accuracy.tolist(),
                points.velocity.tolist(),
                strict=True,
            )
        )
    ]
    return json.dumps({"locations": locations}, indent=1)


def summary_of(capsys: pytest.CaptureFixture[str], path: Path, *options: str) -> dict[str, object]:
    code = main(["analyze", str(path), *BERLIN, "--json", *options])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary: dict[str, object] = json.loads(out)
    return summary


def test_the_same_day_as_csv_rec_gpx_and_records_json_gives_the_same_summary(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    points = read_file(REC)
    csv_path = tmp_path / "day.csv"
    export.write_locations_csv(points, csv_path)
    gpx_path = tmp_path / "KT.gpx"
    gpx_path.write_text(as_gpx(points))
    records = tmp_path / "KT.json.gz"  # the device is the file's stem: Records.json has none
    records.write_bytes(gzip.compress(as_records(points).encode()))
    plain = tmp_path / "KT"  # no extension at all: told by content
    plain.write_text(as_records(points))

    summaries = [summary_of(capsys, path) for path in (REC, csv_path, gpx_path, records, plain)]
    compared = (
        "points",
        "path_km",
        "raw_path_km",
        "max_distance_km",
        "time_at_home_s",
        "time_away_s",
        "time_unknown_s",
        "trips",
    )
    first = summaries[0]
    assert first["trips"]  # the day has a trip, so the comparison covers them
    for summary in summaries[1:]:
        assert {k: summary[k] for k in compared} == {k: first[k] for k in compared}
        assert list(summary["devices"]) == ["KT"]  # type: ignore[call-overload]


def test_gpx_1_0_routes_waypoints_hdop_speed_and_points_without_time(tmp_path: Path) -> None:
    path = tmp_path / "ride.gpx"
    path.write_text(
        '<?xml version="1.0"?>\n<gpx version="1.0" xmlns="http://www.topografix.com/GPX/1/0">\n'
        f'<wpt lat="52.0" lon="13.0"><time>{iso(T0 * 10**6)}</time></wpt>\n'
        '<wpt lat="52.5" lon="13.5"><name>no time</name></wpt>\n'
        '<rte><rtept lat="52.1" lon="13.1">'
        f"<time>{iso((T0 + 60) * 10**6)}</time><hdop>2.4</hdop><speed>5</speed></rtept></rte>\n"
        '<trk><trkseg><trkpt lat="52.2" lon="13.2"><time>2024-03-10T13:02:00+01:00</time>'
        "</trkpt></trkseg></trk></gpx>\n"
    )
    skipped: Counter[str] = Counter()
    points = formats.concat(list(formats.read_batches(path, "bike", skipped)))
    assert points.device_ids == ("bike",)
    assert points.timestamp.tolist() == [T0 * 10**6, (T0 + 60) * 10**6, (T0 + 120) * 10**6]
    assert points.accuracy.tolist() == [MISSING, 12, MISSING]  # hdop 2.4 x 5 m
    assert points.velocity.tolist() == [MISSING, 18, MISSING]  # 5 m/s
    assert skipped == {"GPX <wpt> without a time": 1}


def test_a_gpx_track_names_its_device_and_a_file_without_one_needs_device(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.gpx"
    body = f'<trkseg><trkpt lat="1" lon="2"><time>{iso(T0 * 10**6)}</time></trkpt></trkseg>'
    path.write_text(
        '<gpx xmlns="http://www.topografix.com/GPX/1/1" xmlns:o="urn:otel-worker:gpx:1">'
        f"<trk><extensions><o:device>phone</o:device></extensions>{body}</trk>"
        f"<trk>{body}</trk></gpx>"
    )
    points = read_file(path)
    assert points.device_ids == ("phone", "t")  # the second track names none: the stem
    with pytest.raises(SourceError, match="names no device; give one with --device"):
        list(formats.read_batches(path, None))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '<gpx>\n<trk><trkseg>\n<trkpt lat="1" lon="2"><time>soon</time></trkpt>'
            "</trkseg></trk></gpx>",
            r"line 3: time 'soon' is not an ISO-8601 time",
        ),
        (
            '<gpx>\n\n<wpt lat="1"><time>2024-01-01T00:00:00Z</time></wpt></gpx>',
            r"line 3: <wpt> without lat and lon",
        ),
        ("<gpx>\n<trk>\n<trkseg></trk></gpx>", r"line 3: invalid XML: mismatched tag"),
        ("<kml></kml>", r"root is <kml>, not <gpx>"),
        ('<!DOCTYPE gpx [<!ENTITY a "aaaa">]><gpx>&a;</gpx>', r"XML entities are refused"),
    ],
)
def test_bad_gpx_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.gpx"
    path.write_text(text)
    with pytest.raises(SourceError, match=message):
        read_file(path)


def test_geojson_points_and_linestrings_with_times(tmp_path: Path) -> None:
    path = tmp_path / "walk.geojson"
    line_times = [iso((T0 + k) * 10**6) for k in (10, 20)]
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [13, 52]},
                        "properties": {"time": T0, "accuracy": 7, "device_id": "a"},
                    },
                    {
                        "type": "Feature",
                        "geometry": {
                            "type": "LineString",
                            "coordinates": [[13.1, 52.1], [13.2, 52.2]],
                        },
                        "properties": {"coordTimes": line_times},
                    },
                    {
                        "type": "Feature",
                        "geometry": {"type": "LineString", "coordinates": [[1, 2], [3, 4]]},
                        "properties": {},
                    },
                    {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": []}},
                ],
            }
        )
    )
    skipped: Counter[str] = Counter()
    points = formats.concat(list(formats.read_batches(path, "walk", skipped)))
    assert points.device_ids == ("a", "walk")
    assert points.timestamp.tolist() == [T0 * 10**6, (T0 + 10) * 10**6, (T0 + 20) * 10**6]
    assert points.lat.tolist() == [52, 52.1, 52.2]
    assert points.accuracy.tolist() == [7, MISSING, MISSING]
    assert skipped == {
        "GeoJSON LineString without per-coordinate times": 1,
        "GeoJSON Polygon": 1,
    }


def test_timeline_raw_signals_then_paths_and_the_ios_array(tmp_path: Path) -> None:
    raw = tmp_path / "Timeline.json"
    raw.write_text(
        json.dumps(
            {
                "semanticSegments": [
                    {
                        "startTime": "2024-03-10T12:00:00.000+00:00",
                        "timelinePath": [{"point": "52.0°, 13.0°", "time": iso(T0 * 10**6)}],
                    }
                ],
                "rawSignals": [
                    {
                        "position": {
                            "LatLng": "52.5°, 13.5°",
                            "accuracyMeters": 9,
                            "speedMetersPerSecond": 2.5,
                            "timestamp": "2024-03-10T12:05:00.000Z",
                        }
                    },
                    {"wifiScan": {}},
                ],
            }
        )
    )
    points = read_file(raw)
    assert points.lat.tolist() == [52.5]  # raw positions win over the sampled path
    assert points.accuracy.tolist() == [9]
    assert points.velocity.tolist() == [9]

    paths = tmp_path / "paths.json"
    paths.write_text(
        json.dumps(
            {
                "semanticSegments": [
                    {"visit": {"topCandidate": {"placeLocation": {"latLng": "1°, 2°"}}}},
                    {"timelinePath": [{"point": "-33.5°, 151.25°", "time": iso(T0 * 10**6)}]},
                ]
            }
        )
    )
    assert read_file(paths).lon.tolist() == [151.25]

    ios = tmp_path / "location-history.json"
    ios.write_text(
        json.dumps(
            [
                {
                    "startTime": "2024-03-10T13:00:00.000+01:00",
                    "endTime": "2024-03-10T14:00:00Z",
                    "timelinePath": [
                        {"point": "geo:52.1,13.1", "durationMinutesOffsetFromStartTime": "0"},
                        {"point": "geo:52.2,13.2", "durationMinutesOffsetFromStartTime": "30"},
                    ],
                }
            ]
        )
    )
    points = read_file(ios)
    assert points.timestamp.tolist() == [T0 * 10**6, (T0 + 1800) * 10**6]
    assert points.device_ids == ("location-history",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"locations": [{"latitudeE7": 1, "longitudeE7": 2, "timestamp": "x"}]}',
            r"near byte \d+: time 'x' is not an ISO-8601 time",
        ),
        (
            '{"locations": [{"latitudeE7": "n", "longitudeE7": 2, "timestampMs": "1"}]}',
            r"near byte \d+: latitudeE7 'n' is not a number",
        ),
        (
            '{"locations": [{"latitudeE7": 1, "longitudeE7": 2,\n "timestamp": }]}',
            r"invalid JSON near byte \d+",
        ),
        (
            '{"locations": [{"latitudeE7": 1, "longitudeE7": 2, "timestampMs": "soon"}]}',
            r"near byte \d+: timestampMs 'soon' is not a number",
        ),
        (
            '{"rawSignals": [{"position": {"LatLng": "north", "timestamp": "2024-01-01T00:00Z"}}]}',
            r"'north' is not 'lat°, lng°'",
        ),
    ],
)
def test_bad_json_names_the_byte_offset(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(SourceError, match=message):
        read_file(path)


def test_records_json_is_read_in_batches_with_its_device_tags(tmp_path: Path) -> None:
    path = tmp_path / "Records.json"
    path.write_text(
        json.dumps(
            {
                "locations": [
                    {
                        "latitudeE7": 520000000 + k,
                        "longitudeE7": 130000000,
                        "timestampMs": str((T0 + k) * 1000),
                        "deviceTag": 7 if k % 2 else -3,
                    }
                    for k in range(5)
                ]
                + [{"timestampMs": "1"}]
            }
        )
    )
    skipped: Counter[str] = Counter()
    batches = list(formats.read_batches(path, None, skipped, batch_rows=2))
    assert [len(b) for b in batches] == [2, 2, 1]
    points = formats.concat(batches)
    assert points.device_ids == ("-3", "7")
    assert np.array_equal(np.sort(points.timestamp), (T0 + np.arange(5)) * 10**6)
    assert skipped == {"Takeout record without latitudeE7/longitudeE7": 1}


def takeout_layout(records: list[dict[str, object]]) -> str:
    """Records.json as Google writes it: two-space indents, `}, {` between records."""
    return json.dumps({"locations": records}, indent=2).replace("},\n    {", "}, {")


def test_records_json_in_takeouts_layout_reads_the_same_in_small_and_large_blocks(
    tmp_path: Path,
) -> None:
    records: list[dict[str, object]] = []
    for k in range(300):
        record: dict[str, object] = {
            "latitudeE7": 513397000 + 37 * k,
            "longitudeE7": 123731000 - 11 * k,
            "accuracy": None if k == 7 else 3 + k % 50,
            # A brace and a quote inside a string, and nested objects with their own
            # "timestamp": none of them ends a record.
            "source": "WIFI" if k % 13 else 'odd }, {"name',
            "deviceTag": 11 if k < 200 else 22,
            "timestamp": iso((T0 + 10 * k) * 10**6 + (k % 3) * 1000),
        }
        if k % 4 == 0:
            record["velocity"] = k % 9
        if k % 5 == 0:
            record["activity"] = [
                {"activity": [{"type": "STILL", "confidence": 90}], "timestamp": "2001-01-01Z"}
            ]
        records.append(record)
    del records[150]["latitudeE7"]  # passed over, counted
    del records[151]["timestamp"]  # the same
    path = tmp_path / "Records.json"
    path.write_text(takeout_layout(records))
    kept = [r for r in records if "latitudeE7" in r and "timestamp" in r]
    for block in (64, 1000, formats.BLOCK_BYTES):
        skipped: Counter[str] = Counter()
        points = formats.concat(
            formats.read_batches(path, None, skipped, batch_rows=40, block_bytes=block)
        )
        assert points.device_ids == ("11", "22")
        assert len(points) == len(kept) == 298
        assert points.lat.tolist() == [r["latitudeE7"] / 1e7 for r in kept]  # type: ignore[operator]
        assert points.lon.tolist() == [r["longitudeE7"] / 1e7 for r in kept]  # type: ignore[operator]
        expected_us = [
            dt.datetime.fromisoformat(str(r["timestamp"])).timestamp() * 10**6 for r in kept
        ]
        assert points.timestamp.tolist() == [round(t) for t in expected_us]
        assert points.accuracy.tolist() == [
            MISSING if r["accuracy"] is None else r["accuracy"] for r in kept
        ]
        assert points.velocity.tolist() == [
            round(r["velocity"] * 3.6) if "velocity" in r else MISSING  # type: ignore[operator]
            for r in kept
        ]
        assert skipped == {
            "Takeout record without latitudeE7/longitudeE7": 1,
            "Takeout record without a timestamp": 1,
        }


def test_a_bad_record_deep_in_a_records_json_is_named_near_its_byte(tmp_path: Path) -> None:
    records: list[dict[str, object]] = [
        {"latitudeE7": 520000000 + k, "longitudeE7": 130000000, "timestamp": iso(T0 * 10**6)}
        for k in range(3000)
    ]
    records[2000]["timestamp"] = "soon"
    path = tmp_path / "Records.json"
    text = takeout_layout(records)
    path.write_text(text)
    bad_end = text.index("}", text.index('"soon"')) + 1
    with pytest.raises(SourceError, match="time 'soon' is not an ISO-8601 time") as raised:
        read_file(path)
    named = re.search(r"near byte (\d+)", str(raised.value))
    assert named is not None
    assert bad_end <= int(named[1]) <= bad_end + 4096 < len(text)


def test_analyze_reads_a_pipe_such_as_a_process_substitution(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    expected = summary_of(capsys, REC)
    pipe = tmp_path / "KT"
    os.mkfifo(pipe)
    done = threading.Event()

    def feed() -> None:
        with pipe.open("wb") as out:  # waits for the reader
            out.write(gzip.compress(as_records(read_file(REC)).encode()))
        # A reader that opened the pipe a second time would wait for a writer for ever: give
        # it an empty one, so such a reader fails instead of hanging.
        while not done.wait(0.05):
            with contextlib.suppress(OSError):
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        summary = summary_of(capsys, pipe)
    finally:
        done.set()
        feeder.join(5)
    for key in ("points", "path_km", "trips", "time_at_home_s"):
        assert summary[key] == expected[key], key


def test_an_empty_gpx_is_not_location_data(tmp_path: Path) -> None:
    path = tmp_path / "empty.gpx.gz"
    path.write_bytes(gzip.compress(b'<gpx version="1.1"></gpx>'))
    with pytest.raises(SourceError, match="no location fixes"):
        read_file(path)


XSD = Path(__file__).resolve().parents[1] / "fixtures" / "gpx-1.1.xsd"


def validate_gpx(path: Path) -> None:
    from lxml import etree

    schema = etree.XMLSchema(etree.parse(str(XSD)))
    document = etree.parse(str(path))
    assert schema.validate(document), schema.error_log


def test_analyze_writes_valid_gpx_that_reads_back_to_the_same_summary(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "day.gpx"
    code = main(
        ["analyze", str(REC), *BERLIN, "--json", "--gpx", str(out), "--max-accuracy-m", "0"]
    )
    first_out, err = capsys.readouterr()
    assert code == 0, err
    assert f"wrote a GPX track of 9 fixes to {out}" in err
    validate_gpx(out)
    text = out.read_text()
    assert "<otel:device>KT</otel:device>" in text
    # kept fixes more than 30 minutes apart: only across the stay (its 11:30 fix is jitter)
    assert text.count("<trkseg>") == 2
    back = json.loads(first_out)
    again = summary_of(
        capsys, out, "--max-accuracy-m", "0"
    )  # its device comes from the track's extension
    for key in ("path_km", "max_distance_km", "time_at_home_s", "time_away_s", "trips"):
        assert again[key] == back[key], key
    assert list(again["devices"]) == ["KT"]  # type: ignore[call-overload]


def test_gpx_out_escapes_device_names_and_splits_at_the_gap_limit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "two.csv"
    source.write_text(
        "device_id,latitude,longitude,timestamp,accuracy,velocity\n"
        f'"a<&>\x01",52.0,180.0,{T0},5,36\n'
        f'"a<&>\x01",52.001,13.0,{T0 + 60},,\n'
        f"b,52.0,13.0,{T0}.5,,\n"
        f"b,52.01,13.0,{T0 + 600},,\n"
    )
    out = tmp_path / "two.gpx"
    code = main(
        [
            "analyze",
            str(source),
            *BERLIN,
            "--gpx",
            str(out),
            "--max-gap-min",
            "5",
            "--max-speed-kmh",
            "0",
        ]
    )
    _, err = capsys.readouterr()
    assert code == 0, err
    validate_gpx(out)
    text = out.read_text()
    assert "<name>a&lt;&amp;&gt;\ufffd</name>" in text
    assert 'lon="-180.0000000"' in text  # +180 is the schema's -180
    assert "<otel:accuracy>5</otel:accuracy><otel:speed>10.000</otel:speed>" in text
    assert "2024-03-10T12:00:00.500000Z" in text
    assert text.count("<trk>") == 2
    assert text.count("<trkseg>") == 3  # b's fixes are 10 minutes apart: two segments


def test_gpx_out_carries_stays_as_waypoints_that_read_back_as_no_fixes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # 40 minutes at a café 2 km from home (a fix a minute), then a walk away from it.
    rows = [f"p,51.3577,12.3731,{T0 + 60 * k},10," for k in range(41)]
    rows += [f"p,{51.3577 + 0.002 * k:.4f},12.3731,{T0 + 2400 + 60 * k},10," for k in range(1, 6)]
    source = tmp_path / "cafe.csv"
    source.write_text(
        "device_id,latitude,longitude,timestamp,accuracy,velocity\n" + "\n".join(rows)
    )
    out = tmp_path / "cafe.gpx"
    code = main(["analyze", str(source), *BERLIN, "--json", "--gpx", str(out)])
    first, err = capsys.readouterr()
    assert code == 0, err
    validate_gpx(out)
    summary = json.loads(first)
    (stay,) = summary["stays"]
    text = out.read_text()
    assert text.count("<wpt ") == 1
    assert "<time>2024-03-10T12:00:00Z</time>" in text.split("<trk>")[0]
    assert f"<name>{stay['place']}</name>" in text
    assert "<type>stay</type>" in text
    assert "<otel:end>2024-03-10T12:40:00Z</otel:end>" in text
    again = summary_of(capsys, out)
    # Read back, the track's points are the fixes and the stay's waypoint is none of them.
    assert again["points"]["read"] == text.count("<trkpt ")  # type: ignore[index]
