"""Reading location files: a Recorder day, CSV exports, OwnTracks JSON, and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.engine.points import MISSING, MISSING_TIME
from shared.tools.sources import SourceError, read_file

REC = Path(__file__).resolve().parents[1] / "fixtures" / "owntracks-day.rec"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_recorder_file_reads_its_location_fixes_only() -> None:
    points = read_file(REC)
    # 15 lines: 11 location fixes; two lwt, a waypoint and a transition are skipped (the
    # waypoint and the transition carry lat/lon/tst too).
    assert len(points) == 11
    assert points.device_ids == ("KT",)
    assert points.timestamp[0] == 1684044000 * 1_000_000
    assert points.timestamp[1] == 1684044600 * 1_000_000  # a string tst
    assert np.all(np.diff(points.timestamp) > 0)
    assert points.accuracy.max() == 5000
    assert (points.velocity == MISSING).sum() == 5  # vel -1 means unknown
    assert points.battery[0] == 88
    lag = points.created_at - points.timestamp
    assert (lag >= 0).all()
    assert lag.max() > 60 * 1_000_000  # a batch the phone sent late


def test_a_locations_csv_with_iso_and_epoch_times(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "export.csv",
        "id,device_id,latitude,longitude,accuracy,velocity,battery,timestamp,created_at,raw_payload\n"
        '1,phone,40.7,-74.0,10,,80,2024-03-10 12:00:00+00,,"{""a"": 1}"\n'
        "2,phone,40.8,-74.1,,5,,2024-03-10T08:00:30-04:00,2024-03-10T12:00:31Z,\n"
        "3,tablet,40.9,-74.2,7,0,50,2024-03-10T12:01:00.5,1710072061,\n",
    )
    points = read_file(path)
    assert points.device_ids == ("phone", "tablet")
    base = 1710072000 * 1_000_000
    assert points.timestamp.tolist() == [base, base + 30_000_000, base + 60_500_000]
    assert points.accuracy.tolist() == [10, MISSING, 7]
    assert points.velocity.tolist() == [MISSING, 5, 0]
    assert points.battery.tolist() == [80, MISSING, 50]
    assert points.created_at.tolist() == [MISSING_TIME, base + 31_000_000, base + 61_000_000]


def test_epoch_times_before_1970_are_read_and_a_lone_minus_is_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "old.csv",
        "device_id,latitude,longitude,timestamp\nscan,51.5,-0.1,-86400\nscan,51.5,-0.1,-0.5\n",
    )
    assert read_file(path).timestamp.tolist() == [-86_400_000_000, -500_000]
    bad = write(tmp_path, "bad.csv", "device_id,latitude,longitude,timestamp\nscan,51.5,-0.1,-\n")
    with pytest.raises(SourceError, match=r"line 2: timestamp '-' is not an ISO-8601 time"):
        read_file(bad)


def test_owntracks_json_as_an_array_and_as_lines(tmp_path: Path) -> None:
    fixes = [
        {
            "_type": "location",
            "lat": 52.1,
            "lon": 10.1,
            "tst": 1440395361,
            "acc": 10,
            "tid": "NE",
            "batt": 90,
            "vel": 30,
        },
        {"_type": "lwt", "tst": "1440363922"},
        {"_type": "location", "lat": 52.2, "lon": 10.2, "tst": "1440395400", "tid": "NE"},
    ]
    array = read_file(write(tmp_path, "a.json", json.dumps(fixes, indent=1)))
    lines = read_file(write(tmp_path, "b.jsonl", "\n".join(map(json.dumps, fixes)) + "\n\n"))
    for points in (array, lines):
        assert len(points) == 2
        assert points.device_ids == ("NE",)
        assert points.timestamp.tolist() == [1440395361_000_000, 1440395400_000_000]
        assert points.accuracy.tolist() == [10, MISSING]
        assert points.velocity.tolist() == [30, MISSING]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "device_id,latitude,longitude\nx,1,2\n", "line 1: missing column 'timestamp'"),
        (
            "b.csv",
            "device_id,latitude,longitude,timestamp\nx,1,2,1700000000\nx,1,two,1700000001\n",
            "line 3: longitude 'two' is not a number",
        ),
        (
            "c.csv",
            "device_id,latitude,longitude,timestamp\nx,1,2,1700000000\nx,1,2\n",
            "line 3: 3 fields, expected 4",
        ),
        (
            "d.csv",
            "device_id,latitude,longitude,timestamp\nx,1,2,yesterday\n",
            "line 2: timestamp 'yesterday' is not an ISO-8601 time",
        ),
        (
            "e.csv",
            "device_id,latitude,longitude,timestamp,accuracy\nx,1,2,1700000000,\nx,1,2,1700000001,far\n",
            "line 3: accuracy 'far' is not a number",
        ),
        (
            "f.jsonl",
            '{"_type":"location","lat":1,"lon":2,"tst":3}\n{"_type":"location","lat":1,\n',
            "line 2: invalid JSON",
        ),
        (
            "g.jsonl",
            '{"_type":"location","lat":1,"lon":2,"tst":3}\n{"_type":"location","lon":2,"tst":4}\n',
            "line 2: location without 'lat'",
        ),
        (
            "h.json",
            '[\n {"_type":"location","lat":1,"lon":2,"tst":3},\n'
            ' {"_type":"location","lat":"north","lon":2,"tst":4}\n]',
            "line 3: lat 'north' is not a number",
        ),
        ("i.json", '[\n {"_type":"location","lat":1,"lon":2,"tst":3},\n', "line 3: invalid JSON"),
        ("j.json", "[1]", "line 1: expected a JSON object"),
        (
            "k.rec",
            '2015-08-24T05:55:07Z\t*\t{"_type":"location","lat":1,"lon":2,"tst":3}\n'
            "2015-08-24T05:55:08Z no tabs here\n",
            "line 2: expected 'time<TAB>marker<TAB>JSON'",
        ),
        (
            "l.rec",
            '2015-08-24T05:55:07Z\t*\t{"_type":"location","lat":1,"lon":2,"tst":3}\n2015-08-24T05:55:08Z\t*\t{"_type":"location",\n',
            "line 2: invalid JSON",
        ),
        (
            "n.rec",
            '2015-08-24T05:55:07Z\t*\t{"_type":"location","lat":1,"lon":2,"tst":true}\n',
            "line 1: tst True is not a number",
        ),
        (
            "o.csv",
            "device_id,latitude,longitude,timestamp\nx,1,2,1700000000\n\nx,1,2\n",
            "line 4: 3 fields, expected 4",
        ),
    ],
)
def test_a_malformed_file_names_the_line_and_the_problem(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(SourceError) as raised:
        read_file(path)
    assert str(raised.value).startswith(f"{path}, {message}")


def test_not_a_number_coordinates_are_read_and_left_to_the_invalid_rule(tmp_path: Path) -> None:
    # What `\\copy locations TO ... CSV` writes for such rows: the engine drops and counts
    # them, as it does when compute reads the same rows from PostgreSQL.
    text = (
        "device_id,latitude,longitude,timestamp\n"
        "x,NaN,2,1700000000\nx,Infinity,-Infinity,1700000001\nx,1,2,1700000002\n"
    )
    points = read_file(write(tmp_path, "a.csv", text))
    assert np.isnan(points.lat[0])
    assert points.lat[1] == np.inf
    assert points.lon[1] == -np.inf
    fixes = [{"_type": "location", "lat": float("nan"), "lon": 2, "tst": 3}]
    assert np.isnan(read_file(write(tmp_path, "b.json", json.dumps(fixes))).lat[0])


def test_unreadable_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="No such file"):
        read_file(tmp_path / "missing.csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"device_id\xff\xfe")
    with pytest.raises(SourceError, match="not UTF-8"):
        read_file(binary)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("empty.csv", "", "empty file; expected a locations CSV, OwnTracks JSON or a Recorder"),
        ("blank.rec", "\n\n", "empty file"),
        ("spaces.json", "  \n", "empty file"),
        ("h.csv", "device_id,latitude,longitude,timestamp\n", "no location fixes: the header"),
        (
            "w.jsonl",
            '{"_type":"lwt","tst":1}\n{"_type":"waypoint","lat":1,"lon":2,"tst":3}\n',
            "no location fixes: 2 JSON object(s) (1 lwt, 1 waypoint), none with _type 'location'",
        ),
        ("a.json", "[]", "no location fixes: no JSON objects with _type 'location'"),
        ("o.json", '{"name": "not OwnTracks"}', "(1 without _type), none with _type 'location'"),
        (
            "t.rec",
            '2023-05-14T04:00:02Z\t-\t{"_type":"lwt","tst":"1684036800"}\n'
            '2023-05-14T04:00:03Z\t-\t{"_type":"transition","lat":1,"lon":2,"tst":3}\n',
            "(1 lwt, 1 transition), none with _type 'location'",
        ),
        (
            "notes.txt",
            "shopping list\nmilk\n",
            "line 1: missing columns 'device_id', 'latitude', 'longitude', 'timestamp'",
        ),
    ],
)
def test_a_file_without_location_fixes_is_an_error_naming_what_is_missing(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(SourceError) as raised:
        read_file(path)
    assert str(raised.value).startswith(f"{path}")
    assert message in str(raised.value)


def test_a_byte_order_mark_blank_lines_and_line_separators_in_strings_are_read(
    tmp_path: Path,
) -> None:
    header = "device_id,latitude,longitude,timestamp\n"
    csv_text = "\ufeff" + header + "x,1,2,1700000000\r\nx,1,3,1700000060\r\n\r\n\n"
    assert read_file(write(tmp_path, "bom.csv", csv_text)).lon.tolist() == [2.0, 3.0]
    fix = {"_type": "location", "lat": 52.1, "lon": 10.1, "tst": 1440395361, "tid": "NE"}
    bom_json = read_file(write(tmp_path, "bom.json", "\ufeff" + json.dumps([fix])))
    assert bom_json.timestamp.tolist() == [1440395361_000_000]
    # U+2028 is legal inside a JSON string and must not end the line.
    noted = json.dumps({**fix, "desc": "home\u2028office"}, ensure_ascii=False)
    record = f"2015-08-24T05:49:21Z\t*                 \t{noted}\n"
    assert len(read_file(write(tmp_path, "sep.rec", record))) == 1
    assert len(read_file(write(tmp_path, "sep.jsonl", noted + "\n"))) == 1
