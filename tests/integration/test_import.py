"""`otel-worker import` into a real `public.locations`: idempotent, all-or-nothing per file."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from shared import cli, locations
from shared.engine.points import Points
from shared.tools.sources import SourceError, read_file
from tests.conftest import Database

REC = Path(__file__).resolve().parents[1] / "fixtures" / "owntracks-day.rec"


@pytest.fixture
def use_database(monkeypatch: pytest.MonkeyPatch, scratch_database: Database) -> Database:
    monkeypatch.setenv("DATABASE_URL", scratch_database.url)
    return scratch_database


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _rows(database: Database) -> list[tuple[object, ...]]:
    with database.connect() as conn:
        return conn.execute(
            "SELECT device_id, tid, latitude, longitude, accuracy, velocity, battery,"
            ' extract(epoch FROM "timestamp")::bigint, created_at IS NOT NULL'
            ' FROM public.locations ORDER BY "timestamp"'
        ).fetchall()


def _records_json(points: Points) -> bytes:
    locations_ = [
        {
            "latitudeE7": round(lat * 1e7),
            "longitudeE7": round(lon * 1e7),
            "accuracy": acc,
            "timestampMs": str(t // 1000),
        }
        for t, lat, lon, acc in zip(
            points.timestamp.tolist(),
            points.lat.tolist(),
            points.lon.tolist(),
            points.accuracy.tolist(),
            strict=True,
        )
    ]
    return gzip.compress(json.dumps({"locations": locations_}).encode())


def test_a_recorder_file_imports_once_and_a_second_time_adds_nothing(
    use_database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "import", str(REC), "--device", "kim-phone")
    assert code == 0, err
    assert "created public.locations" in out
    assert "11 fixes read, 11 added, 0 skipped as already present" in out
    rows = _rows(use_database)
    assert len(rows) == 11
    first = rows[0]
    assert first[:2] == ("kim-phone", "ne")  # tid derived as OwnTracks derives it
    assert first[4:9] == (12, 0, 88, 1684044000, True)  # accuracy, vel, batt, tst, created_at
    assert sum(row[5] is None for row in rows) == 5  # vel -1: NULL

    code, out, _ = _run(capsys, "import", str(REC), "--device", "kim-phone")
    assert code == 0
    assert "11 fixes read, 0 added, 11 skipped as already present" in out
    assert len(_rows(use_database)) == 11


def test_the_same_fixes_from_takeout_are_already_present(
    use_database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert _run(capsys, "import", str(REC), "--device", "KT")[0] == 0
    takeout = tmp_path / "Records.json.gz"
    points = read_file(REC)
    takeout.write_bytes(_records_json(points))
    # Records.json names no device: --device is required.
    code, _, err = _run(capsys, "import", str(takeout))
    assert code == 2
    assert "names no device; give one with --device" in err

    extra = tmp_path / "more.gpx"
    extra.write_text(
        '<gpx xmlns="http://www.topografix.com/GPX/1/1"><wpt lat="51.5" lon="12.5">'
        "<time>2023-05-15T08:00:00Z</time></wpt><wpt lat='1' lon='2'/></gpx>"
    )
    code, out, err = _run(capsys, "import", str(takeout), str(extra), "--device", "KT")
    assert code == 0, err
    assert "11 fixes read, 0 added, 11 skipped as already present" in out
    assert "1 fixes read, 1 added" in out
    assert "skipped 1: GPX <wpt> without a time" in out
    assert "total: 12 fixes read, 1 added, 11 already present" in out
    assert len(_rows(use_database)) == 12


def test_dry_run_counts_and_writes_nothing(
    use_database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "import", str(REC), "--device", "KT", "--dry-run")
    assert code == 0
    assert "11 fixes read, 11 would be added" in out
    assert "dry run: nothing was written" in out
    with use_database.connect() as conn:
        absent = conn.execute("SELECT to_regclass('public.locations') IS NULL").fetchone()
    assert absent == (True,)  # not even the table


def test_a_file_that_fails_halfway_adds_nothing(use_database: Database) -> None:
    points = read_file(REC)

    def batches() -> Iterator[Points]:
        yield points
        raise SourceError("bad.gpx, line 9: time 'soon' is not an ISO-8601 time")

    with use_database.connect() as conn, pytest.raises(SourceError):
        locations.import_points(conn, batches())
    with use_database.connect() as conn:
        assert conn.execute("SELECT to_regclass('public.locations')").fetchone() == (None,)
        locations.import_points(conn, iter([points]))
    with use_database.connect() as conn, pytest.raises(SourceError):
        locations.import_points(conn, batches())
    assert len(_rows(use_database)) == 11  # the first import, and nothing of the failed one


def test_an_unreadable_file_exits_2_naming_it(
    use_database: Database, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.gpx"
    bad.write_text("<gpx>\n<trk>\n</gpx>")
    code, _, err = _run(capsys, "import", str(bad), "--device", "x")
    assert code == 2
    assert "bad.gpx, line 3: invalid XML" in err
    assert "nothing of it was imported" in err


def test_create_unique_index_is_asked_for(
    use_database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, "import", str(REC), "--device", "KT")[0] == 0
    with use_database.connect() as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE indexname = %s", (locations.UNIQUE_INDEX_NAME,)
        ).fetchone() == (0,)
    assert _run(capsys, "import", str(REC), "--device", "KT", "--create-unique-index")[0] == 0
    with use_database.connect() as conn:
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                'INSERT INTO public.locations (device_id, latitude, longitude, "timestamp")'
                ' SELECT device_id, latitude, longitude, "timestamp" FROM public.locations'
                " LIMIT 1"
            )


def test_batches_that_overlap_or_repeat_add_each_fix_once_and_leave_the_index(
    use_database: Database,
) -> None:
    # A new table is loaded without its index while every batch is plainly new; a batch
    # that overlaps an earlier one in time, or repeats a fix, goes through the duplicate
    # check, and the index is there at the end either way.
    points = read_file(REC)
    half = points.take(np.arange(6))
    twice = points.take(np.repeat(np.arange(len(points)), 2))  # each fix twice in one batch
    with use_database.connect() as conn:
        counts = locations.import_points(conn, iter([half, points, twice]))
    assert (counts.read, counts.written, counts.present) == (6 + 11 + 22, 11, 28)
    assert len(_rows(use_database)) == 11
    with use_database.connect() as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE indexname = %s", (locations.INDEX_NAME,)
        ).fetchone() == (1,)
        later = points.take(np.arange(6, len(points)))
        again = locations.import_points(conn, iter([later]))
    assert (again.read, again.written) == (5, 0)
