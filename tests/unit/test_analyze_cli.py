"""`otel-worker analyze` and `otel-worker seed` as a person runs them."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from pathlib import Path

import pytest

from shared import config
from shared.cli import main

REC = Path(__file__).resolve().parents[1] / "fixtures" / "owntracks-day.rec"
BERLIN = ["--tz", "Europe/Berlin", "--home", "51.3397,12.3731"]  # Leipzig, where the day begins


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_recorder_day_gives_a_readable_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "analyze", str(REC), *BERLIN)
    assert code == 0, err
    assert "2023-05-14 to 2023-05-14 (Europe/Berlin)" in out
    assert "11 read, 8 used; dropped: accuracy 3" in out
    assert "Trips         1" in out
    assert "KT" in out


def test_json_output_is_the_summary(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(
        capsys,
        "analyze",
        str(REC),
        *BERLIN,
        "--date",
        "2023-05-14",
        "--json",
        "--csv",
        str(tmp_path / "fixes.csv"),
        "--geojson",
        str(tmp_path / "map.geojson"),
    )
    assert code == 0
    summary = json.loads(out)  # only the JSON on stdout: the notes went to stderr
    assert err.splitlines() == [
        f"wrote 11 rows to {tmp_path / 'fixes.csv'}",
        f"wrote a map of 8 fixes to {tmp_path / 'map.geojson'}",
    ]
    assert summary["schema_version"] == 1
    assert summary["points"]["read"] == 11
    assert summary["points"]["dropped"]["accuracy"] == 3
    # Halle is about 32 km from Leipzig: the farthest honest fix (a 5000 m one lies farther).
    assert 31 < summary["max_distance_km"] < 33
    assert summary["path_km"] < summary["raw_path_km"]
    assert summary["devices"]["KT"]["path_km"] == summary["path_km"]
    table = list(csv.DictReader(io.StringIO((tmp_path / "fixes.csv").read_text())))
    assert len(table) == 11
    assert table[0]["timestamp"] == "2023-05-14T08:00:00+02:00"
    assert json.loads((tmp_path / "map.geojson").read_text())["type"] == "FeatureCollection"


def test_options_override_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "analyze",
        str(REC),
        *BERLIN,
        "--json",
        "--max-accuracy-m",
        "0",
        "--max-speed-kmh",
        "0",
        "--jitter-m",
        "0",
        "--keep-duplicates",
        "--exit-km",
        "2",
        "--enter-km",
        "1",
        "--max-gap-min",
        "60",
        "--jitter-fixes",
        "3",
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["points"]["used"] == 11
    assert summary["parameters"]["max_accuracy_m"] is None
    assert summary["parameters"]["exit_radius_km"] == 2
    assert summary["parameters"]["max_gap_s"] == 3600


def test_a_day_without_fixes_is_a_result_with_a_note(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "analyze", str(REC), *BERLIN, "--date", "2023-05-15")
    assert code == 0
    assert "0 read" in out
    assert "no fixes in the window" in out


def test_seed_writes_a_locations_export_analyze_can_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "locations.csv"
    code, out, err = run(
        capsys, "seed", "--csv", str(target), "--days", "2", "--devices", "2", "--seed", "3"
    )
    assert code == 0
    assert out == ""
    assert re.fullmatch(rf"wrote \d+ rows to {re.escape(str(target))}\n", err)
    code, out, _ = run(
        capsys,
        "analyze",
        str(target),
        "--from",
        "2024-03-08",
        "--to",
        "2024-03-09",
        "--device",
        "phone2",
        "--json",
    )
    assert code == 0
    summary = json.loads(out)
    assert list(summary["devices"]) == ["phone2"]
    assert [day["date"] for day in summary["days"]] == ["2024-03-08", "2024-03-09"]
    assert summary["trips"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--date", "2023-05-14", "--from", "2023-05-14"], "not both"),
        (["--device", "nobody"], "device 'nobody' is not in"),
        (["--from", "2023-05-15", "--to", "2023-05-14"], "before the first day"),
        (["--tz", "Nowhere/Land"], "--tz: unknown time zone 'Nowhere/Land'"),
        (["--tz", "localtime"], "--tz: unknown time zone 'localtime'"),
        (["--exit-km", "0.1"], "--enter-km (0.3) must be smaller than --exit-km (0.1)"),
        (["--max-gap-min", "-5"], "--max-gap-min: Input should be greater than 0"),
        (["--jitter-fixes", "0"], "--jitter-fixes: Input should be greater than or equal to 1"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, "analyze", str(REC), *argv)
    assert code == 2
    assert message in err


def test_a_malformed_file_exits_2_naming_the_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("device_id,latitude,longitude,timestamp\np,1,2,1700000000\np,1,2,soon\n")
    code, out, err = run(capsys, "analyze", str(bad))
    assert code == 2
    assert out == ""
    assert "line 3: timestamp 'soon'" in err


def test_argument_errors_are_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--home", "north"], ["--home", "95,0"], ["--date", "14/05/2023"]):
        with pytest.raises(SystemExit) as raised:
            main(["analyze", str(REC), *argv])
        assert raised.value.code == 2
    with pytest.raises(SystemExit):
        main(["seed", "--days", "many"])
    assert "--days" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "text", "missing"),
    [
        ("empty.json", "", "empty file"),
        ("places.json", '[{"_type":"waypoint","lat":1,"lon":2,"tst":3}]', "no location fixes"),
        ("people.csv", "name,age\nada,36\n", "missing columns 'device_id'"),
    ],
)
def test_input_that_is_not_location_data_exits_2_naming_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, text: str, missing: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    code, out, err = run(capsys, "analyze", str(path))
    assert code == 2
    assert out == ""
    assert err.startswith(f"otel-worker analyze: {path}")
    assert missing in err
    assert len(err.splitlines()) == 1


def test_defaults_for_home_and_time_zone_are_said_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run(capsys, "analyze", str(REC), "--json")
    assert code == 0
    json.loads(out)
    assert err == (
        "otel-worker analyze: assumed the default home 40.736097,-74.039373 and time zone "
        "America/New_York; set --home LAT,LON (or HOME_LATITUDE/HOME_LONGITUDE) and --tz ZONE "
        "(or HOME_TIMEZONE)\n"
    )
    code, _, err = run(capsys, "analyze", str(REC), "--tz", "Europe/Berlin")
    assert "assumed the default home 40.736097,-74.039373; set --home" in err
    assert "time zone" not in err
    monkeypatch.setenv("HOME_LATITUDE", "51.3397")
    monkeypatch.setenv("HOME_LONGITUDE", "12.3731")
    config.load.cache_clear()
    code, _, err = run(capsys, "analyze", str(REC), "--tz", "Europe/Berlin")
    assert (code, err) == (0, "")
    code, _, err = run(capsys, "analyze", str(REC), *BERLIN)
    assert (code, err) == (0, "")


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["--max-accuracy-m", "9"],
            "the accuracy filter dropped 10 of 11 fixes; raise --max-accuracy-m, or 0 keeps",
        ),
        (
            ["--max-speed-kmh", "1"],
            "the jump filter dropped",
        ),
    ],
)
def test_a_filter_that_drops_more_than_half_is_named_with_its_option(
    capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    code, out, err = run(capsys, "analyze", str(REC), *BERLIN, *argv)
    assert code == 0
    assert f"otel-worker analyze: {said}" in err
    assert said not in out
    # The default filters drop 3 of 11 here: nothing to say.
    assert run(capsys, "analyze", str(REC), *BERLIN)[2] == ""


def workday_csv(path: Path) -> Path:
    """Home (Jersey City) until 08:00, a 20-minute drive 5 km east, the office until 17:00,
    then home again: one fix a minute, local time New York (2024-06-05)."""
    home_lat, home_lon = 40.736097, -74.039373
    lines = ["device_id,latitude,longitude,timestamp"]
    start = 1717560000  # 2024-06-05 00:00 in New York
    for minute in range(24 * 60):
        hour = minute / 60
        if hour < 8 or hour >= 17.5:
            east = 0.0
        elif hour < 8 + 1 / 3:
            east = (hour - 8) * 3 * 5000
        elif hour < 17:
            east = 5000.0
        else:
            east = (17.5 - hour) * 2 * 5000
        lon = home_lon + east / (111_195.0 * 0.7579)
        lines.append(f"phone,{home_lat:.6f},{lon:.6f},{start + minute * 60}")
    path.write_text("\n".join(lines) + "\n")
    return path


HOME_NY = ["--tz", "America/New_York", "--home", "40.736097,-74.039373", "--date", "2024-06-05"]


def test_the_day_reads_as_a_timeline_with_named_places(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    track = workday_csv(tmp_path / "day.csv")
    places = tmp_path / "places.yaml"
    places.write_text(
        "- name: Office\n  latitude: 40.736097\n  longitude: -73.98\n  radius_m: 150\n"
    )
    code, out, err = run(capsys, "analyze", str(track), *HOME_NY, "--places", str(places))
    assert code == 0, err
    timeline = out[out.index("Timeline      phone") :].splitlines()
    assert timeline[1] == "  2024-06-05"
    assert timeline[2].startswith("    00:00\u201308:0")
    assert timeline[2].endswith("  home  8h00m")
    assert timeline[3].startswith("    08:0")
    assert timeline[3].endswith("move 5.0 km")
    assert "  Office  8h4" in timeline[4]
    assert "  Office  " in out[out.index("Places") :]
    code, out, _ = run(capsys, "analyze", str(track), *HOME_NY, "--places", str(places), "--json")
    summary = json.loads(out)
    assert [stay["place"] for stay in summary["stays"]] == ["home", "Office", "home"]
    assert summary["days"][0]["places"][0]["place"] in ("home", "Office")
    assert summary["parameters"]["places"][0]["name"] == "Office"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- name: Office\n  latitude: 95\n  longitude: 0\n", "place 1: latitude: Input should be"),
        ("name: Office\n", "must hold a list of places"),
        ("- {name: home, latitude: 1, longitude: 2}\n", "'home' is taken"),
        ("[{", "cannot read places"),
    ],
)
def test_a_bad_places_file_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, message: str
) -> None:
    places = tmp_path / "places.json"
    places.write_text(content)
    code, out, err = run(
        capsys, "analyze", str(workday_csv(tmp_path / "d.csv")), "--places", str(places)
    )
    assert code == 2
    assert out == ""
    assert "--places: " in err
    assert message in err


def test_a_range_is_analysed_day_by_day_as_a_range_job_is(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from shared.engine import day_window
    from shared.engine.assembly import day_by_day
    from shared.tools.sources import read_file

    target = tmp_path / "locations.csv"
    run(capsys, "seed", "--csv", str(target), "--days", "4", "--devices", "2", "--seed", "5")
    fixes = tmp_path / "fixes.csv"
    code, out, err = run(
        capsys,
        "analyze",
        str(target),
        "--from",
        "2024-03-09",
        "--to",
        "2024-03-11",  # over the DST change
        "--json",
        "--csv",
        str(fixes),
    )
    assert code == 0, err
    summary = json.loads(out)
    settings = config.load(config.AnalysisSettings)
    window = day_window(dt.date(2024, 3, 9), dt.date(2024, 3, 11), settings.home_timezone)
    expected = day_by_day(read_file(target), window, settings.engine_params())
    assert summary == expected.model_dump(mode="json")
    assert [month["month"] for month in summary["months"]] == ["2024-03"]
    with fixes.open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == summary["points"]["read"]
    # Device by device, each in time order: the rows a range job's CSV holds.
    assert [row["device_id"] for row in rows] == sorted(row["device_id"] for row in rows)
    assert f"wrote {len(rows)} rows to {fixes}" in err
